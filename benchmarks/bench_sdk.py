"""SDK overheads: ``FaceModel.sample(1024)`` vs the bare generator, and load time.

    python benchmarks/bench_sdk.py --model DIR [--n 1024] [--repeats 10]

``sample`` draws codes with a torch.Generator, decodes them and wraps them in ``Faces``;
the bare figure is ``template + generator(z)`` on codes already in memory.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import torch


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    from facemodel.model import FaceModel

    t = time.perf_counter()
    model = FaceModel.from_pretrained(a.model)
    load = time.perf_counter() - t
    z = torch.randn(a.n, model.config.generator.code_dim)
    with torch.no_grad():
        bare = median_time(lambda: model.template + model.generator(z), a.repeats)
    ours = median_time(lambda: model.sample(a.n, seed=0), a.repeats)
    cold = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import facemodel.model as m; "
                           f"m.FaceModel.from_pretrained({a.model!r}); print(time.perf_counter()-t)"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print(f"# {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| figure | value |\n|---|---|")
    print(f"| bare generator, {a.n} faces | {bare * 1e3:.1f} ms ({a.n / bare:.0f} faces/s) |")
    print(f"| model.sample({a.n}) | {ours * 1e3:.1f} ms ({a.n / ours:.0f} faces/s), {bare / ours:.2f}x bare |")
    print(f"| from_pretrained, first call after import | {load * 1e3:.0f} ms |")
    print(f"| import facemodel.model + from_pretrained (fresh process) | {float(cold) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
