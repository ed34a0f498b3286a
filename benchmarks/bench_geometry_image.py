"""Time the geometry-mapping layer: forward + backward, batch 64 (paper setting).

    python benchmarks/bench_geometry_image.py [--ict DIR] [--batch 64] [--resolutions 64 128] [--device cpu]

Compares the shipped sparse-matrix layer with a gather (index + barycentric sum) variant.
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from facemodel.data.ict import ICTSource
from facemodel.geometry.geometry_image import GeometryImage


def gather_variant(layer: GeometryImage, v: torch.Tensor) -> torch.Tensor:
    B, n = v.shape[0], layer.resolution
    idx = layer.vertex_index.reshape(-1)
    w = layer.weights.reshape(1, -1, 3, 1)
    return (v[:, idx].reshape(B, -1, 3, 3) * w).sum(2).reshape(B, n, n, 3).permute(0, 3, 1, 2)


def timeit(fn, v: torch.Tensor, repeats: int) -> tuple[float, float]:
    for _ in range(3):  # warm-up
        fn(v).square().sum().backward()
    times = []
    for _ in range(repeats):
        v.grad = None
        if v.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(v).square().sum().backward()
        if v.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3, times[0] * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ict", default=None, help="ICT-FaceKit folder (default $FACEMODEL_ICT_DIR)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    tpl = ICTSource(args.ict).face_template()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print("| resolution | variant | fwd+bwd median (ms) | best (ms) | build (s) |")
    print("|---|---|---|---|---|")
    for n in args.resolutions:
        t = time.perf_counter()
        layer = GeometryImage(tpl.uv, tpl.faces, resolution=n).to(args.device)
        build = time.perf_counter() - t
        v = torch.from_numpy(tpl.vertices).to(args.device)[None].repeat(args.batch, 1, 1).requires_grad_(True)
        for name, fn in (("sparse CSR (shipped)", layer), ("gather", lambda x: gather_variant(layer, x))):
            med, best = timeit(fn, v, args.repeats)
            print(f"| {n} | {name} | {med:.2f} | {best:.2f} | {build:.3f} |")


if __name__ == "__main__":
    main()
