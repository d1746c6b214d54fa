#!/usr/bin/env bash
# The integer kernels' tests (their proptests included) under AddressSanitizer: every SIMD
# path this CPU has (AVX2, AVX-512 VNNI/VPOPCNTDQ) and the portable one, with bounds of
# every raw-pointer access checked at run time. Needs a nightly toolchain (no extra
# component: the ASan runtime ships with rustc on x86_64 Linux). Builds into its own target
# directory (burn included: ~20 min on 2 cores the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=0"
cargo +nightly test -p dmq-kernels --target x86_64-unknown-linux-gnu \
  --target-dir "${ASAN_TARGET_DIR:-target/asan}" \
  --lib --test suite -- --skip gpu::
