"""Time the ICT 4D dataset build and record its peak memory.

    python benchmarks/bench_build.py --out /tmp/ict4d-bench [--size 30000] [--ict DIR]

Prints wall time, CPU time and peak resident memory (ru_maxrss; includes pages of the
memory-mapped output file that were written).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time

from facemodel.data.builder import ICTDatasetConfig, build_ict_dataset
from facemodel.data.ict import ICTSource


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ict", default=None)
    args = p.parse_args()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    m = build_ict_dataset(ICTSource(args.ict), args.out, ICTDatasetConfig(size=args.size, seed=args.seed), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    disk = sum(f.stat().st_size for f in os.scandir(args.out)) / 1024**3
    print(f"size {m.num_meshes} meshes, {m.num_identities} identities, label fraction {m.counts['expression_label_fraction']:.4f}")
    print(f"wall {wall:.1f} s, cpu {cpu:.1f} s, peak RSS {rss:.2f} GB, on disk {disk:.2f} GB, checksum {m.checksum[:16]}")


if __name__ == "__main__":
    main()
