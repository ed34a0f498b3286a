"""scripts/gpu_runs.sh end to end on the CPU, tiny: build, train two recipes, select, pack."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

from facemodel.model import FaceModel

REPO = Path(__file__).resolve().parents[1]


def test_gpu_runs_script_trains_selects_and_packs(ict_dir, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, OUT=str(out), WORK=str(work), ICT=str(ict_dir), EMB=str(tmp_path / "no-nets"),
               CONFIG="configs/tiny.yaml", DEVICE="cpu", TRAIN_MIN="0.05", THREADS="1", KEEP="1", WHEELS="none",
               BENCH_STEPS="1", SELECT_ICT="none", BUILD_ARGS="--size 400",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
    specs = ["plain eval_every=2 snapshot_every=2 log_every=2 max_steps=4",
             "rigid lambda_rigidity=10 eval_every=2 snapshot_every=2 log_every=2 max_steps=4"]
    r = subprocess.run(["bash", "scripts/gpu_runs.sh", *specs], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "building the dataset" in log and "train_step (ours)" in log and "done" in log
    # every run's metrics and selection came back
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        for run in ("plain", "rigid"):
            assert {f"{run}/metrics.jsonl", f"{run}/selection.json", f"{run}/config.json", f"{run}.log"} <= names
        cfg = json.load(tar.extractfile("rigid/config.json"))
    assert cfg["rigidity"]["weight"] == 10 and cfg["rigidity"]["scale_mm"] == 0.5
    # KEEP=1: one model, in parts under 16 MiB that concatenate to a loadable float16 generator
    parts = sorted(out.glob("*.st.part-*"))
    assert parts and len({p.name.split(".")[0] for p in parts}) == 1
    assert all(p.stat().st_size <= 15_000_000 for p in parts) and len(list(out.iterdir())) <= 8
    run = parts[0].name.split(".")[0]
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
    (model_dir / "config.json").write_bytes((work / "runs" / run / "selected" / "config.json").read_bytes())
    packed, full = FaceModel.from_pretrained(model_dir), FaceModel.from_pretrained(work / "runs" / run / "selected")
    assert torch.equal(packed.template, full.template)  # only generator weights are halved
    z = torch.randn(3, full.generator.config.code_dim)
    with torch.no_grad():
        err = (packed(z) - full(z)).abs().max().item()
    assert 0 < err < 0.05  # mm: float16 rounding of the generator weights, nothing else
