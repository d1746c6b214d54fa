"""Times the forward pass of the default dmq models in diffusers/PyTorch on this CPU.

The configs are those of crates/dmq-models/src/defaults.rs (kept identical by hand; the
script checks the parameter counts it prints against `cargo bench --bench forward`'s models).
Writes docs/results/forward_torch.json; `cargo bench --bench forward` gives the Rust side.

    pip install torch diffusers
    python3 scripts/bench/forward_torch.py [--threads 2]
"""
import argparse
import json
import os
import time

import torch
from diffusers import DiTTransformer2DModel, UNet2DModel

UNET = dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=[32, 64, 128],
            layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
            up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], attention_head_dim=32,
            norm_num_groups=8, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu")
DIT = dict(sample_size=28, in_channels=1, out_channels=1, patch_size=2, num_layers=6,
           num_attention_heads=4, attention_head_dim=32, num_embeds_ada_norm=10,
           norm_type="ada_norm_zero", activation_fn="gelu-approximate", attention_bias=True,
           norm_elementwise_affine=False, norm_eps=1e-6, upcast_attention=False)


def bench(fn, min_time=3.0):
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    times = []
    while time.perf_counter() - t0 < min_time or n < 5:
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
        n += 1
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/forward_torch.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for name, model in [("unet-fmnist", UNet2DModel(**UNET).eval()),
                            ("dit-fmnist", DiTTransformer2DModel(**DIT).eval())]:
            params = sum(p.numel() for p in model.parameters())
            for b in (1, 16):
                x = torch.randn(b, 1, 28, 28)
                t = torch.full((b,), 500)
                if name == "dit-fmnist":
                    y = torch.full((b,), 3)
                    fn = lambda: model(x, timestep=t, class_labels=y).sample
                else:
                    fn = lambda: model(x, t).sample
                med = bench(fn)
                rows.append({"model": name, "batch": b, "median_s": med, "images_per_s": b / med,
                             "params": params, "threads": args.threads,
                             "torch": torch.__version__})
                print(f"{name} batch {b}: {med * 1e3:.2f} ms ({b / med:.1f} images/s), {params} params")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
