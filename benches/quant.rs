//! Fake-quantization and bit-packing throughput.
//!
//! `cargo bench --bench quant -- --quick` prints elements/s for each compiled-in backend
//! (flex by default; add `--features wgpu` or `--features ndarray`), per granularity and
//! bit-width, on a `[1024, 1024]` tensor; and pack/unpack throughput of the host codec.

#![allow(missing_docs)] // criterion's macros generate undocumented public items

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dmq::quant::pack::{pack_codes, unpack_codes};
use dmq::quant::{QuantSpec, Quantizer, RangeInit, UniformQuantizer};

const ROWS: usize = 1024;
const COLS: usize = 1024;

fn fake_quant(c: &mut Criterion) {
    for (backend, device) in dmq::quant::device::all_devices() {
        let mut group = c.benchmark_group(format!("fake_quant/{backend}"));
        group.throughput(Throughput::Elements((ROWS * COLS) as u64));
        let x = Tensor::<2>::random([ROWS, COLS], Distribution::Normal(0.0, 1.0), &device);
        for (gran, spec_of) in [
            (
                "tensor",
                (|b| QuantSpec::int(b).unwrap()) as fn(u32) -> QuantSpec,
            ),
            ("channel", |b| QuantSpec::int(b).unwrap().per_channel(0)),
            ("group128", |b| QuantSpec::int(b).unwrap().per_group(1, 128)),
        ] {
            for bits in [8u32, 4, 2] {
                let q = UniformQuantizer::init(spec_of(bits), x.clone(), &RangeInit::Max).unwrap();
                group.bench_with_input(
                    BenchmarkId::new(gran, format!("{bits}bit")),
                    &bits,
                    |b, _| {
                        b.iter(|| {
                            let y = q.fake_quant(x.clone(), 0).unwrap();
                            sync(&device, y);
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

/// Waits for the backend to finish the work queued for `y` (wgpu runs asynchronously).
fn sync(device: &Device, y: Tensor<2>) {
    device.sync().expect("device sync");
    drop(y);
}

fn packing(c: &mut Criterion) {
    let mut group = c.benchmark_group("pack");
    let n = ROWS * COLS;
    group.throughput(Throughput::Elements(n as u64));
    for bits in [1u32, 2, 4, 8] {
        let codes: Vec<u8> = (0..n).map(|i| ((i * 7919) % (1 << bits)) as u8).collect();
        let packed = pack_codes(&codes, bits).unwrap();
        group.bench_with_input(BenchmarkId::new("pack", bits), &bits, |b, &bits| {
            b.iter(|| pack_codes(&codes, bits).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("unpack", bits), &bits, |b, &bits| {
            b.iter(|| unpack_codes(&packed, bits, n).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, fake_quant, packing);
criterion_main!(benches);
