#!/usr/bin/env python3
"""Reader for dmq quantized model files (``*.dmq.safetensors``, format ``dmq.model.v1``).

The format is specified in ``docs/format.md``; this script is its reference reader outside
Rust. It needs only numpy and the ``safetensors`` package (``pip install numpy safetensors``).

Library use::

    from dmq_reader import read_file, params_at_step
    f = read_file("model.dmq.safetensors")
    f["metadata"]["dmq.method"]          # "naive", ...
    f["weights"]["conv_in.weight"]       # float32 array, dequantized, shape as recorded
    f["activations"]["conv_in.a"]        # spec, step_to_set and the (delta, zero) sets
    params_at_step(f["activations"]["conv_in.a"], 0)   # (delta, zero) used at step 0

Command line::

    python3 scripts/dmq_reader.py FILE                       # a short summary
    python3 scripts/dmq_reader.py FILE --dump-json OUT.json  # per-parameter sums, see dump()
"""

import argparse
import json
import re
import sys

import numpy as np
from safetensors import safe_open

CONTAINER_FORMAT = "dmq-quantized/1"  # header key `dmq.format`
MODEL_FORMAT = "dmq.model.v1"  # header key `user.dmq.format`
# Model metadata whose value is JSON text (the others are plain strings).
JSON_KEYS = {"dmq.config", "dmq.scheduler", "dmq.method_settings", "dmq.quant_config",
             "dmq.timesteps", "dmq.quantized_layers"}
REQUIRED = ["dmq.class_name", "dmq.config", "dmq.scheduler", "dmq.method",
            "dmq.method_settings", "dmq.quant_config", "dmq.num_steps", "dmq.timesteps",
            "dmq.quantized_layers"]
ACT_TENSOR = re.compile(r"^(?P<key>.+\.[ab])\.(?P<what>delta|zero)\.(?P<set>[0-9]+)$")


class FormatError(ValueError):
    """The file is not a dmq.model.v1 file, or one of its entries is malformed."""


def read_metadata(path):
    """The raw safetensors header metadata (str -> str), after both format checks."""
    with safe_open(path, framework="np") as f:
        raw = dict(f.metadata() or {})
    if raw.get("dmq.format") != CONTAINER_FORMAT:
        raise FormatError(f"{path}: dmq.format is {raw.get('dmq.format')!r}, "
                          f"expected {CONTAINER_FORMAT!r}")
    version = raw.get("user.dmq.format")
    if version != MODEL_FORMAT:
        raise FormatError(f"{path}: user.dmq.format is {version!r}; this reader reads "
                          f"only {MODEL_FORMAT!r}")
    return raw


def model_metadata(raw):
    """The `user.dmq.*` keys, `user.` stripped, JSON values decoded, num_steps an int."""
    missing = [k for k in REQUIRED if "user." + k not in raw]
    if missing:
        raise FormatError(f"missing metadata {', '.join(missing)} (not a dmq model file?)")
    out = {}
    for k, v in raw.items():
        if not k.startswith("user.dmq."):
            continue
        key = k[len("user."):]
        out[key] = json.loads(v) if key in JSON_KEYS else v
    out["dmq.num_steps"] = int(out["dmq.num_steps"])
    if len(out["dmq.timesteps"]) != out["dmq.num_steps"]:
        raise FormatError("dmq.timesteps and dmq.num_steps disagree")
    return out


def storage_bits(bits):
    """Width a code of `bits` bits is stored at: the next of 1, 2, 4, 8."""
    return 1 if bits <= 1 else 2 if bits == 2 else 4 if bits <= 4 else 8


def unpack_codes(packed, bits, n):
    """`n` unsigned codes from packed bytes: code i sits in byte i // k at bit offset
    sb * (i % k), least significant bits first (sb = storage width, k = 8 // sb)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    sb = storage_bits(bits)
    per = 8 // sb
    if packed.size != -(-n // per):
        raise FormatError(f"{packed.size} code bytes for {n} codes at {bits} bits")
    if sb == 8:
        return packed.copy()
    shifts = (sb * np.arange(per)).astype(np.uint8)
    all_codes = ((packed[:, None] >> shifts) & ((1 << sb) - 1)).reshape(-1)
    if np.any(all_codes[n:]):
        raise FormatError("padding bits after the last code are not zero")
    codes = all_codes[:n]
    if np.any(codes >> bits):
        raise FormatError(f"a code does not fit in {bits} bits")
    return codes


def group_index(shape, granularity):
    """Index of the (delta, zero) pair of every element (row-major), as int64 array."""
    numel = int(np.prod(shape, dtype=np.int64))
    i = np.arange(numel, dtype=np.int64)
    if granularity == "PerTensor":
        return np.zeros(numel, dtype=np.int64)
    (kind, args), = granularity.items()
    axis = args["axis"]
    if not 0 <= axis < len(shape):
        raise FormatError(f"axis {axis} out of range for shape {shape}")
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    length = shape[axis]
    if kind == "PerChannel":
        return (i // inner) % length
    if kind == "PerGroup":
        size = args["size"]
        if size <= 0 or length % size:
            raise FormatError(f"group size {size} does not divide {length}")
        outer, a, r = i // (inner * length), (i // inner) % length, i % inner
        return (outer * inner + r) * (length // size) + a // size
    if kind == "Split":
        at, channel = args["at"], args["channel"]
        if not 0 < at < length:
            raise FormatError(f"split point {at} outside axis {axis} of {shape}")
        block = ((i // inner) % length >= at).astype(np.int64)
        if channel is None:
            return block
        if not 0 <= channel < len(shape) or channel == axis:
            raise FormatError(f"split channel axis {channel} for shape {shape}")
        c_inner = int(np.prod(shape[channel + 1:], dtype=np.int64))
        return 2 * ((i // c_inner) % shape[channel]) + block
    raise FormatError(f"unknown granularity {granularity!r}")


def num_groups(shape, granularity):
    """Number of (delta, zero) pairs a spec needs for `shape`."""
    if granularity == "PerTensor":
        return 1
    (kind, args), = granularity.items()
    if kind == "Split":
        return 2 if args["channel"] is None else 2 * shape[args["channel"]]
    return shape[args["axis"]] if kind == "PerChannel" else int(np.prod(shape)) // args["size"]


def int_range(spec):
    """(qmin, qmax) of an integer spec."""
    bits = spec["bits"]
    if not isinstance(bits, dict) or not 1 <= bits.get("Int", 0) <= 8:
        raise FormatError(f"not an integer spec with 1..8 bits: {bits!r}")
    b = bits["Int"]
    return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if spec["signed"] else (0, (1 << b) - 1)


def dequantize(packed, shape, spec, delta, zero):
    """float32 array of `shape`: (q - z[g]) * delta[g] with q = code + qmin (f32 arithmetic)."""
    qmin, _ = int_range(spec)
    n = int(np.prod(shape, dtype=np.int64))
    delta = np.asarray(delta, dtype=np.float32)
    zero = np.asarray(zero, dtype=np.float32)
    if delta.size != num_groups(shape, spec["granularity"]) or zero.size != delta.size:
        raise FormatError(f"{delta.size} deltas / {zero.size} zeros for shape {shape}")
    g = group_index(shape, spec["granularity"])
    q = (unpack_codes(packed, spec["bits"]["Int"], n).astype(np.int32) + qmin).astype(np.float32)
    return ((q - zero[g]) * delta[g]).astype(np.float32).reshape(shape)


def read_file(path):
    """Everything in a file: {"metadata", "weights", "activations"} (see the module docs).

    weights: every model parameter, quantized ones dequantized, as float32 arrays (SVDQuant's
    f16 branch factors `<layer>.low_rank.{down,up}` widened to float32).
    activations: "<layer>.<a|b>" -> {"spec", "step_to_set", "sets": [(delta, zero), ...]},
    or {"dynamic": {"bits", "symmetric", "per_token"}} for a range measured per call.
    """
    raw = read_metadata(path)
    meta = model_metadata(raw)
    user = {k[len("user."):]: v for k, v in raw.items() if k.startswith("user.")}
    quantized = {k[len("dmq.q."):]: json.loads(v) for k, v in raw.items()
                 if k.startswith("dmq.q.")}
    act_keys = {k[:-len(".spec")] for k in user if k.endswith(".spec") and not k.startswith("dmq.")}
    weights, act_tensors = {}, {}
    with safe_open(path, framework="np") as f:
        names = set(f.keys())
        for name, entry in quantized.items():
            parts = [f"{name}.qcodes", f"{name}.delta", f"{name}.zero"]
            if any(p not in names for p in parts):
                raise FormatError(f"{path}: {name}: missing codes, delta or zero")
            names -= set(parts)
            codes, delta, zero = (f.get_tensor(p) for p in parts)
            weights[name] = dequantize(codes, list(entry["shape"]), entry["spec"], delta, zero)
        for name in sorted(names):
            t = f.get_tensor(name)
            if t.dtype == np.float16:
                if not np.all(np.isfinite(t)):
                    raise FormatError(f"{path}: f16 tensor {name} is not finite")
                t = t.astype(np.float32)
            elif t.dtype != np.float32:
                raise FormatError(f"{path}: float tensor {name} has dtype {t.dtype}")
            m = ACT_TENSOR.match(name)
            if m and m["key"] in act_keys:
                act_tensors[(m["key"], m["what"], int(m["set"]))] = t
            else:
                weights[name] = t
    activations = {}
    for key in sorted(act_keys):
        spec = json.loads(user[key + ".spec"])
        step_to_set = json.loads(user[key + ".step_to_set"])
        if not step_to_set or max(step_to_set) >= len(step_to_set):
            raise FormatError(f"{path}: {key}.step_to_set is empty or names too many sets")
        sets = []
        for i in range(max(step_to_set) + 1):
            try:
                sets.append((act_tensors[(key, "delta", i)], act_tensors[(key, "zero", i)]))
            except KeyError:
                raise FormatError(f"{path}: {key}: set {i} missing") from None
        activations[key] = {"spec": spec, "step_to_set": step_to_set, "sets": sets}
    for key in sorted(k[:-len(".dynamic")] for k in user if k.endswith(".dynamic")):
        d = json.loads(user[key + ".dynamic"])
        if not 2 <= d.get("bits", 0) <= 8:
            raise FormatError(f"{path}: {key}.dynamic: bits outside 2..8")
        activations[key] = {"dynamic": d}
    return {"metadata": meta, "weights": weights, "activations": activations}


def params_at_step(act, step):
    """(delta, zero) an operand uses at sampling step index `step` (0 = first step)."""
    if step < len(act["step_to_set"]):
        return act["sets"][act["step_to_set"][step]]
    if len(act["sets"]) == 1:
        return act["sets"][0]  # one set serves every step
    raise FormatError(f"no activation parameters for step {step}")


def dump(f):
    """The JSON summary of --dump-json: metadata, and per weight shape/sum/abs_sum/first."""
    weights = {}
    for name, w in sorted(f["weights"].items()):
        flat = w.reshape(-1)
        weights[name] = {"shape": list(w.shape),
                         "sum": float(flat.astype(np.float64).sum()),
                         "abs_sum": float(np.abs(flat.astype(np.float64)).sum()),
                         "first": [float(x) for x in flat[:8]]}
    acts = {k: a if "dynamic" in a else
            {"spec": a["spec"], "step_to_set": a["step_to_set"],
             "sets": [{"delta": d.tolist(), "zero": z.tolist()} for d, z in a["sets"]]}
            for k, a in f["activations"].items()}
    return {"metadata": f["metadata"], "weights": weights, "activations": acts}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file", help="a .dmq.safetensors file")
    p.add_argument("--dump-json", metavar="OUT", help="write the JSON summary to OUT")
    a = p.parse_args(argv)
    try:
        f = read_file(a.file)
    except (FormatError, KeyError, OSError) as e:
        print(f"dmq_reader: {e}", file=sys.stderr)
        return 1
    if a.dump_json:
        with open(a.dump_json, "w") as out:
            json.dump(dump(f), out, indent=1)
    else:
        m = f["metadata"]
        print(f"{a.file}: {m['dmq.class_name']} quantized with {m['dmq.method']} "
              f"({m['dmq.num_steps']} steps), {len(f['weights'])} parameters, "
              f"{len(f['activations'])} activation quantizers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
