"""Sampling throughput and peak memory of the peers a dmq user would compare against, on
this CPU: the same diffusers model directory (same weights), batch, DDIM steps, guidance and
threads as `dmq bench`, in

- `pytorch`: diffusers' model in PyTorch FP32 (eval, no_grad);
- `onnxruntime`: the model exported to ONNX (opset 17) in ONNX Runtime FP32;
- `onnxruntime-int8`: the same graph quantized statically to QDQ INT8 by
  `onnxruntime.quantization.quantize_static` (int8 weights per output channel, uint8
  activations, MinMax ranges calibrated on the model inputs of a few sampling trajectories).

Every path samples `--n` images with `--steps` DDIM steps (diffusers' `DDIMScheduler` from the
model's `scheduler_config.json`, eta 0; its timesteps and ᾱ are computed once and the
children step in numpy), classifier-free guidance `--cfg` for class-conditional models
([uncond; cond] batched, the null label = the number of classes), from the same seeded noise. Each path runs in its own child process, so `peak_rss_mib` (its `VmHWM`) is its own.
Timings: warm-up runs (at least 5 forward passes), then `--reps` runs; `images_per_s` is from
the best run (as `dmq bench` and `int_sample` report), `median_s` is beside it.

    pip install torch diffusers onnx onnxruntime
    python3 scripts/bench/peers.py --model assets/models/unet-fmnist --n 16 --steps 10 \
        --threads 2 --out runs/bench/peers-unet.json

Writes a JSON list of rows (`path`, `format`, `model`, `n`, `steps`, `threads`, `cfg`,
`images_per_s`, `best_s`, `median_s`, `peak_rss_mib`, `max_abs_vs_pytorch`, `versions`); the ONNX files
go to `--work` (default `runs/bench/onnx`). `scripts/bench/e2e.sh` runs it back to back with
`dmq bench`.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PATHS = ["pytorch", "onnxruntime", "onnxruntime-int8"]


def load_model(model_dir):
    import torch  # noqa: F401  (imported by diffusers anyway)
    from diffusers import DiTTransformer2DModel, UNet2DModel

    with open(os.path.join(model_dir, "config.json")) as f:
        cls = json.load(f)["_class_name"]
    if cls == "UNet2DModel":
        return UNet2DModel.from_pretrained(model_dir).eval(), None
    if cls in ("DiTTransformer2DModel", "DiTTransformer2D"):
        m = DiTTransformer2DModel.from_pretrained(model_dir).eval()
        return m, m.config.num_embeds_ada_norm
    raise SystemExit(f"{model_dir}: {cls} is not a model this script runs")


def wrapper(model, classes):
    """The model as `eps = f(x, t[, y])`, the only output its samplers read."""
    import torch

    class Unet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t):
            return self.m(x, t, return_dict=False)[0]

    class Dit(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t, y):
            out = self.m(x, timestep=t, class_labels=y, return_dict=False)[0]
            return out[:, : x.shape[1]]  # a learned-sigma model's ε half

    return Dit(model) if classes is not None else Unet(model)


def prepare(args):
    """In the parent: the DDIM schedule (diffusers' `DDIMScheduler` from the model's
    `scheduler_config.json`, its defaults for what the file leaves out) and the initial noise,
    saved for the children, which then sample with numpy only (an ONNX Runtime child does
    not import PyTorch)."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler

    path = os.path.join(args.model, "scheduler_config.json")
    cfg = json.load(open(path)) if os.path.exists(path) else {}
    s = DDIMScheduler.from_config(cfg)
    if s.config.prediction_type != "epsilon" or s.config.thresholding:
        raise SystemExit(f"{path}: only epsilon prediction without thresholding is benchmarked")
    s.set_timesteps(args.steps)
    sched = {
        "timesteps": [int(t) for t in s.timesteps],
        "alphas_cumprod": s.alphas_cumprod.double().tolist(),
        "final_alpha_cumprod": float(s.final_alpha_cumprod),
        "stride": s.config.num_train_timesteps // args.steps,
        "clip_sample": bool(s.config.clip_sample),
        "clip_sample_range": float(s.config.clip_sample_range),
    }
    with open(os.path.join(args.work, f"{args.tag}-schedule.json"), "w") as f:
        json.dump(sched, f)
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    c, size = cfg.get("in_channels", 3), cfg["sample_size"]
    for name, n, seed in [("noise", args.n, args.seed), ("calib-noise", args.calib_n, args.seed + 1)]:
        g = torch.Generator().manual_seed(seed)
        np.save(os.path.join(args.work, f"{args.tag}-{name}.npy"),
                torch.randn((n, c, size, size), generator=g).numpy())


def sample(eps_fn, args, classes, noise="noise", on_inputs=None):
    """DDIM (eta 0) from the prepared schedule and noise: `eps_fn(x, t, y)` on numpy
    arrays, CFG `[uncond; cond]` for class-conditional models (image i gets class i mod K)."""
    import numpy as np

    sched = json.load(open(os.path.join(args.work, f"{args.tag}-schedule.json")))
    x = np.load(os.path.join(args.work, f"{args.tag}-{noise}.npy")).astype(np.float64)
    n = x.shape[0]
    ac = sched["alphas_cumprod"]
    y = None
    if classes is not None:
        y = np.concatenate([np.full(n, classes), np.arange(n) % classes]).astype(np.int64)
    for t in sched["timesteps"]:
        xin = x.astype(np.float32)
        if y is not None:
            xin = np.concatenate([xin, xin])
        tin = np.full(xin.shape[0], t, dtype=np.int64)
        if on_inputs is not None:
            on_inputs(xin, tin, y)
        eps = eps_fn(xin, tin, y).astype(np.float64)
        if y is not None:
            u, c = eps[:n], eps[n:]
            eps = u + args.cfg * (c - u)
        prev = t - sched["stride"]
        a_t = ac[t]
        a_prev = ac[prev] if prev >= 0 else sched["final_alpha_cumprod"]
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        if sched["clip_sample"]:
            r = sched["clip_sample_range"]
            x0 = np.clip(x0, -r, r)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return x.astype(np.float32)


def model_info(model_dir):
    """(in_channels, sample_size, classes or None) from `config.json` alone."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    classes = cfg.get("num_embeds_ada_norm") if "DiT" in cfg.get("_class_name", "") else None
    return cfg.get("in_channels", 3), cfg["sample_size"], classes


def peak_rss_mib():
    """This process's peak resident set (`VmHWM`: of its own address space, unlike
    `ru_maxrss`, which a child inherits from the parent it was forked from)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run_path(path, args):
    """One path in this process: times it and prints its row as JSON."""
    import numpy as np

    _, _, classes = model_info(args.model)
    if path == "pytorch":
        import torch

        torch.set_num_threads(args.threads)
        model, _ = load_model(args.model)
        w = wrapper(model, classes)

        def eps_fn(x, t, y):
            with torch.no_grad():
                ins = (torch.from_numpy(x), torch.from_numpy(t))
                if y is not None:
                    ins += (torch.from_numpy(y),)
                return w(*ins).numpy()
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        onnx = os.path.join(args.work, f"{args.tag}-{'int8' if path.endswith('int8') else 'fp32'}.onnx")
        sess = ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])

        def eps_fn(x, t, y):
            feed = {"x": x.astype(np.float32), "t": t}
            if y is not None:
                feed["y"] = y
            return sess.run(None, feed)[0]

    # warm-up: at least 5 forward passes (oneDNN and ORT pick and JIT their kernels on the
    # first calls of a shape)
    for _ in range(max(1, -(-5 // args.steps))):
        sample(eps_fn, args, classes)
    times, out = [], None
    for _ in range(args.reps):
        t0 = time.perf_counter()
        out = sample(eps_fn, args, classes)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    np.save(os.path.join(args.work, f"{args.tag}-{path}.npy"), out)
    row = {
        "path": path,
        "format": "INT8" if path.endswith("int8") else "FP32",
        "model": os.path.basename(os.path.normpath(args.model)),
        "n": args.n,
        "steps": args.steps,
        "threads": args.threads,
        "cfg": args.cfg if classes is not None else 1.0,
        "images_per_s": args.n / times[0],
        "best_s": times[0],
        "median_s": med,
        "peak_rss_mib": peak_rss_mib(),
    }
    print(json.dumps(row))


def export(args):
    """The FP32 ONNX graph and its static QDQ INT8 quantization, in `args.work`."""
    import numpy as np
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    torch.set_num_threads(args.threads)
    model, classes = load_model(args.model)
    w = wrapper(model, classes)
    c, s = model.config.in_channels, model.config.sample_size
    b = 2 * args.n if classes is not None else args.n
    x = torch.randn(b, c, s, s)
    t = torch.full((b,), 500, dtype=torch.int64)
    ins, names = (x, t), ["x", "t"]
    if classes is not None:
        ins += (torch.zeros(b, dtype=torch.int64),)
        names.append("y")
    fp32 = os.path.join(args.work, f"{args.tag}-fp32.onnx")
    torch.onnx.export(w, ins, fp32, input_names=names, output_names=["eps"],
                      dynamic_axes={k: {0: "b"} for k in names + ["eps"]}, opset_version=17,
                      dynamo=False)
    # calibration inputs: every step of a few small trajectories of the FP model
    feeds = []

    def keep(xin, tin, y):
        f = {"x": xin.astype(np.float32), "t": tin}
        if y is not None:
            f["y"] = y
        feeds.append(f)

    def eps_fn(x, t, y):
        with torch.no_grad():
            ins = (torch.from_numpy(x), torch.from_numpy(t))
            if y is not None:
                ins += (torch.from_numpy(y),)
            return w(*ins).numpy()

    sample(eps_fn, args, classes, noise="calib-noise", on_inputs=keep)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(fp32, os.path.join(args.work, f"{args.tag}-int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="diffusers model directory")
    ap.add_argument("--n", type=int, default=16, help="images (the batch)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--cfg", type=float, default=1.5, help="guidance (class-conditional models)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-n", type=int, default=4, help="trajectories of INT8 calibration")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--work", default="runs/bench/onnx")
    ap.add_argument("--out", help="JSON file of the rows (default: stdout only)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.tag = os.path.basename(os.path.normpath(args.model))
    os.makedirs(args.work, exist_ok=True)
    if args.child:
        return run_path(args.child, args)
    paths = [p for p in args.paths.split(",") if p]
    for p in paths:
        if p not in PATHS:
            raise SystemExit(f"--paths: {p} is not one of {', '.join(PATHS)}")
    prepare(args)
    if any(p.startswith("onnxruntime") for p in paths):
        export(args)
    rows = []
    for p in paths:
        cmd = [sys.executable, __file__, "--child", p] + [
            a for a in sys.argv[1:] if not a.startswith("--child")]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    import numpy as np
    import onnxruntime
    import torch

    ref = np.load(os.path.join(args.work, f"{args.tag}-pytorch.npy")) if "pytorch" in paths else None
    for r in rows:
        if ref is not None:
            got = np.load(os.path.join(args.work, f"{args.tag}-{r['path']}.npy"))
            r["max_abs_vs_pytorch"] = float(np.abs(got - ref).max())
        r["versions"] = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    if args.out:
        with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(args.out)),
                                         delete=False) as f:
            json.dump(rows, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, args.out)


if __name__ == "__main__":
    main()
