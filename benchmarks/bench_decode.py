"""One decode against a bare matrix-vector product over the output layer (issue 21).

    python benchmarks/bench_decode.py [--model DIR] [--threads 1] [--repeats 400] [--codes 1000] [--batch 64]

Timed in the same run, interleaved call by call (so load and turbo drift hit every figure alike):

- ``decode``: ``model.decode(z)`` of one (1, D) code as a user calls it (validation, the hidden
  layer, the output layer, the template, the finite check, the ``Faces``); ``model(z)`` under
  ``torch.no_grad()`` beside it;
- ``bare``: the output layer alone on prepared tensors in the same precision: float32
  ``torch.addmv(b2, W2, h)`` (W2 (3V, H) contiguous, h (H,)); float16 the same kernel decode
  uses, ``torch.ops.quantized.linear_dynamic_fp16`` (FBGEMM: float16 weights, float32
  activations / accumulation / output) on a prepacked copy; bfloat16 ``torch.mv`` for reference.

The ratio is median(decode) / median(bare) per precision. Errors: vertices of
``FaceModel.from_pretrained(inference_dtype=torch.float16).decode`` against the float32 decode on
``--codes`` N(0, I) codes, per-vertex distance (mm), max and RMS; and, for the record, what
bfloat16 would give (weights rounded to bfloat16 with float32 accumulation, and torch's bfloat16
``mv`` whose output is bfloat16 too). Batched throughput (``--batch`` codes per call) is
printed for information.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def interleaved(fns: dict, repeats: int, warmup: int = 20, seed: int = 0) -> dict[str, float]:
    """Median seconds per call of each function: ``repeats`` rounds of one call each, in a
    shuffled order per round (no function always runs after the same one). ``"A/B"`` keys hold
    the median over rounds of the ratio of the two calls of one round (robust to load drift)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    items, rng = list(fns.items()), random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(items)
        for k, fn in items:
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    out = {k: statistics.median(v) for k, v in times.items()}
    keys = list(fns)
    for x in keys:
        for y in keys:
            if x != y:
                out[f"{x}/{y}"] = statistics.median(p / q for p, q in zip(times[x], times[y]))
    return out


def weights_version(model_dir: Path) -> str:
    """``Version X`` from the weights' model card (README.md), else ``?``."""
    card = model_dir / "README.md"
    m = re.search(r"\*\*Version ([0-9][0-9A-Za-z.+-]*)\*\*", card.read_text(encoding="utf-8")) if card.is_file() else None
    return m.group(1) if m else "?"


def vertex_error(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Max and RMS of the per-vertex distance (mm) between (n, V, 3) batches."""
    d = (a.double() - b.double()).norm(dim=-1)
    return float(d.max()), float(d.pow(2).mean().sqrt())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a facemodel folder (save_pretrained); default: the released weights")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1)")
    p.add_argument("--repeats", type=int, default=400, help="timed rounds (one call of each figure per round)")
    p.add_argument("--codes", type=int, default=1000, help="N(0, I) codes for the float16 error (default 1000)")
    p.add_argument("--batch", type=int, default=64, help="codes per call of the batched throughput figures")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import facemodel
    from facemodel import FaceModel
    from facemodel.hub import resolve_pretrained

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    model = FaceModel.from_pretrained(a.model)
    model16 = FaceModel.from_pretrained(a.model, inference_dtype=torch.float16)
    g = model.generator
    D = g.config.code_dim
    gen = torch.Generator().manual_seed(a.seed)
    z = torch.randn(1, D, generator=gen)
    W, b, scale = g.output_layer()
    W, b = W.detach(), b.detach()
    with torch.no_grad():
        h = g.hidden(z)[0].contiguous()
    packed16 = model16._half_output_layer()  # decode's own prepacked copy: the same 29 MB it reads
    h2 = h[None].contiguous()
    Wbf, hbf = W.bfloat16(), h.bfloat16()

    def forward():
        with torch.no_grad():
            return model(z)

    # one group per precision, each reading one matrix (the decode's own), so every figure of a
    # group finds it equally warm in the caches
    t = interleaved({"decode f32": lambda: model.decode(z), "model(z) f32": forward,
                     "bare f32": lambda: torch.addmv(b, W, h)}, a.repeats, seed=a.seed)  # fmt: skip
    bare16 = lambda: torch.ops.quantized.linear_dynamic_fp16(h2, packed16)  # noqa: E731
    t |= interleaved({"decode f16": lambda: model16.decode(z), "bare f16": bare16}, a.repeats, seed=a.seed)
    t |= interleaved({"bare bf16 mv": lambda: torch.mv(Wbf, hbf)}, max(10, a.repeats // 4), seed=a.seed)

    # errors of the float16 decode (and of bfloat16, for the record) on N(0, I) codes
    Z = torch.randn(a.codes, D, generator=gen)
    with torch.no_grad():
        ref = torch.cat([model.decode(Z[i : i + 256]).vertices for i in range(0, len(Z), 256)])
        f16 = torch.cat([model16.decode(Z[i : i + 256]).vertices for i in range(0, len(Z), 256)])
        H = g.hidden(Z)
        bf_w = (torch.addmm(b, H, W.bfloat16().float().T) * scale).view(len(Z), -1, 3) + model.template
        bf_mv = (torch.mm(H.bfloat16(), Wbf.T) + b.bfloat16()).float().mul(scale).view(len(Z), -1, 3) + model.template
    e16, ebw, ebm = vertex_error(f16, ref), vertex_error(bf_w, ref), vertex_error(bf_mv, ref)

    # batched throughput, for information
    zb = torch.randn(a.batch, D, generator=gen)
    with torch.no_grad():
        hb = g.hidden(zb).contiguous()
    rb = max(10, a.repeats // 20)
    tb = interleaved({"decode f32": lambda: model.decode(zb), "bare f32": lambda: torch.addmm(b, hb, W.T)}, rb, 3)
    tb |= interleaved({"decode f16": lambda: model16.decode(zb),
                       "bare f16": lambda: torch.ops.quantized.linear_dynamic_fp16(hb, packed16)}, rb, 3)  # fmt: skip

    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    cmd = " ".join([env, "python", *map(shlex.quote, sys.argv)]).strip()
    src = resolve_pretrained(a.model)
    mb = W.numel() * 4 / 1e6
    print("| | |\n|---|---|")
    print(f"| date | {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} |")
    print(f"| command | `{cmd}` |")
    print(f"| CPU | {cpu_name()} ({os.cpu_count()} logical cores), {torch.get_num_threads()} thread(s); load average "
          f"before the run {load} |")  # fmt: skip
    print(f"| software | Python {sys.version.split()[0]}, facemodel {facemodel.__version__} (git {commit}), torch "
          f"{torch.__version__}, {platform.platform()} |")  # fmt: skip
    print(f"| weights | {'released' if a.model is None else a.model}, version {weights_version(src)}, generator step "
          f"{model.config.training.get('step', '?')}; output layer {tuple(W.shape)}, {mb:.1f} MB float32 |")  # fmt: skip
    print(f"| timing | medians of {a.repeats} rounds, one code (1, {D}); per precision the decode and its bare product "
          "interleaved call by call (shuffled), reading the same weights |")  # fmt: skip
    print()
    print("| precision | decode (`model.decode(z)`) | bare output layer | decode / bare: medians' ratio, "
          "median of per-round ratios |")  # fmt: skip
    print("|---|---|---|---|")
    print(f"| float32 | {t['decode f32'] * 1e3:.3f} ms (`model(z)`: {t['model(z) f32'] * 1e3:.3f} ms) | "
          f"{t['bare f32'] * 1e3:.3f} ms (`torch.addmv`) | **{t['decode f32'] / t['bare f32']:.3f}x**, "
          f"{t['decode f32/bare f32']:.3f}x (`model(z)`: {t['model(z) f32'] / t['bare f32']:.3f}x, "
          f"{t['model(z) f32/bare f32']:.3f}x) |")  # fmt: skip
    print(f"| float16 output layer | {t['decode f16'] * 1e3:.3f} ms | {t['bare f16'] * 1e3:.3f} ms "
          f"(`quantized.linear_dynamic_fp16`) | **{t['decode f16'] / t['bare f16']:.3f}x**, "
          f"{t['decode f16/bare f16']:.3f}x |")  # fmt: skip
    print(f"| bfloat16 (reference only) | - | {t['bare bf16 mv'] * 1e3:.3f} ms (`torch.mv`) | - |")
    print(f"\nfloat16 decode vs float32 decode: {t['decode f32'] / t['decode f16']:.2f}x faster")
    print()
    print(f"| vertex error vs the float32 decode, {a.codes} N(0, I) codes | max (mm) | RMS (mm) |")
    print("|---|---|---|")
    print(f"| float16 output layer (`inference_dtype=torch.float16`) | {e16[0]:.4f} | {e16[1]:.5f} |")
    print(f"| bfloat16 weights, float32 accumulation (emulated, not offered) | {ebw[0]:.4f} | {ebw[1]:.5f} |")
    print(f"| bfloat16 `mm` (bfloat16 output, not offered) | {ebm[0]:.4f} | {ebm[1]:.5f} |")
    print()
    print(f"| batched, {a.batch} codes per call | time | faces/s |")
    print("|---|---|---|")
    for k, label in [("decode f32", "decode float32"), ("bare f32", "bare `torch.addmm` float32"),
                     ("decode f16", "decode float16 output layer"), ("bare f16", "bare `linear_dynamic_fp16`")]:  # fmt: skip
        print(f"| {label} | {tb[k] * 1e3:.2f} ms | {a.batch / tb[k]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
