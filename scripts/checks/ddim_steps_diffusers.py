"""Samples a committed dmq checkpoint with diffusers' own DDIMScheduler at several step counts
from the same initial noise, to tell a property of the model from a problem of dmq's sampler.

    pip install torch diffusers pillow
    python3 scripts/checks/ddim_steps_diffusers.py assets/models/unet-fmnist --n 64 \
        --steps 20 100 [--no-clip] --out /tmp/ddim-steps

Writes one PNG grid per step count (same noise, seed 0) and prints per-setting pixel
statistics and the mean absolute pixel difference between the first and each other setting.
Unconditional UNet2DModel checkpoints only (the DiT needs class labels and CFG).
"""
import argparse
import os

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--no-clip", action="store_true", help="clip_sample=False")
    ap.add_argument("--out", default="/tmp/ddim-steps")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    model = UNet2DModel.from_pretrained(a.model).eval()
    size = model.config.sample_size
    noise = torch.randn(a.n, model.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    images = {}
    for steps in a.steps:
        # diffusers defaults, as dmq's DdimConfig::new(): leading spacing, clip to [-1, 1], alpha_final = 1
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=not a.no_clip)
        sched.set_timesteps(steps)
        x = noise.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(model(x, t).sample, t, x, eta=0.0).prev_sample
        img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()[:, 0]
        images[steps] = img
        rows = (a.n + 7) // 8
        grid = np.zeros((rows * size, 8 * size), np.uint8)
        for i in range(a.n):
            r, c = divmod(i, 8)
            grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = img[i]
        tag = "noclip" if a.no_clip else "clip"
        path = os.path.join(a.out, f"diffusers-{steps}steps-{tag}.png")
        Image.fromarray(grid).resize((8 * size * 3, rows * size * 3), Image.NEAREST).save(path)
        print(f"{steps} steps ({tag}): mean pixel {img.mean():.1f}, share > 128: {(img > 128).mean():.3f} -> {path}")
    first = a.steps[0]
    for steps in a.steps[1:]:
        d = np.abs(images[first].astype(float) - images[steps].astype(float)).mean()
        print(f"mean |{first} - {steps}| per pixel: {d:.1f} (of 255)")


if __name__ == "__main__":
    main()
