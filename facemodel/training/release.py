"""Package a trained model as the released weights: ``python -m facemodel.training.release``.

    python -m facemodel.training.release --model RUN/model-bs --out weights \\
        --evaluation docs/evaluation/results.json --run RUN --card-notes docs/model_card_notes.md

Writes ``config.json`` and ``model.safetensors`` (network weights stored as float16 unless
``--float32``; the template and UV map stay float32) and a model card ``README.md`` in the
Hugging Face Hub's format (YAML front matter + Markdown) into ``--out``, atomically: the
folder is replaced only when everything was written. The card's tables come from an
evaluation ``results.json`` (``facemodel evaluate``); its prose (recipe, limitations...) from
``--card-notes``, a Markdown file kept in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import torch

from .._fs import atomic_dir
from ..errors import FaceModelError, ReleaseError

__all__ = ["make_release", "model_card", "main", "MAX_RELEASE_BYTES"]

#: The repository's budget for ``weights/`` (all files together).
MAX_RELEASE_BYTES = 40 * 1024 * 1024


def _run_summary(run: Path | None) -> dict:
    if run is None:
        return {}
    out: dict = {}
    cfg = run / "config.json"
    if cfg.is_file():
        out["config"] = json.loads(cfg.read_text())
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        last_train, last_eval = None, None
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "d_loss" in rec:
                last_train = rec
            if any(k.startswith("eval") or k.startswith("ema") for k in rec):
                last_eval = rec
        out["last_step"] = last_train
        out["last_eval"] = last_eval
    return out


def model_card(model, results: dict | None, run_info: dict, notes: str) -> str:
    """The model card text (Hub format: YAML front matter, then Markdown)."""
    from ..evaluation.report import render_report

    cfg = model.config
    factors = ", ".join(f"{f.name} {f.code_dim}-d" for f in cfg.generator.factors)
    front = [
        "---",
        "license: mit",
        "library_name: facemodel",
        "tags:",
        "  - 3d",
        "  - face",
        "  - morphable-model",
        "  - gan",
        "datasets:",
        "  - ICT-FaceKit (ICT 4D, built by facemodel)",
        "---",
        "",
    ]
    body = [
        "# facemodel: decoupled 3D face model (identity × expression)",
        "",
        "An MLP generator trained adversarially after Fernández Abrevaya et al., *A Decoupled 3D Facial Shape "
        "Model by Adversarial Training* (ICCV 2019). Codes: " + factors + f", noise {cfg.generator.noise_dim}-d; "
        f"output: {cfg.generator.num_vertices} vertices in millimetres on the ICT-FaceKit face topology.",
        "",
        "```python",
        "from facemodel import FaceModel",
        "model = FaceModel.from_pretrained()          # these weights, installed with the package",
        "faces = model.sample(4, seed=0, expression=\"happiness\")",
        "```",
        "",
    ]
    step = (getattr(cfg, "training", None) or {}).get("step")
    last = (run_info.get("last_step") or {}).get("step")
    if step is not None:
        ran = f" of a run that reached step {last}" if last is not None and last != step else ""
        body += [f"Exported: the EMA generator at generator step {step}{ran}.", ""]
    elif last is not None:
        body += [f"Last logged generator step: {last} (EMA generator exported).", ""]
    body += [notes.strip(), ""]
    if results:
        report = render_report(results)
        # drop the report's own title and figure section; keep the tables
        report = report.split("\n## Figures")[0].replace("# Evaluation report", "## Evaluation", 1)
        body += [report.strip(), ""]
    return "\n".join(front + body) + "\n"


def make_release(model_dir: str | os.PathLike, out: str | os.PathLike, *, results_json: str | os.PathLike | None = None,
                 run: str | os.PathLike | None = None, notes_file: str | os.PathLike | None = None,
                 float16: bool = True, images: Sequence[str | os.PathLike] = ()) -> Path:  # fmt: skip
    """Write the release folder (see the module docstring); returns its path.

    Raises:
        ReleaseError: a missing input, or files over :data:`MAX_RELEASE_BYTES`.
    """
    from ..model import FaceModel

    model = FaceModel.from_pretrained(str(Path(model_dir).expanduser()))
    results = None
    if results_json is not None:
        p = Path(results_json).expanduser()
        if not p.is_file():
            raise ReleaseError(f"evaluation results {str(p)!r} not found; run `facemodel evaluate` first")
        results = json.loads(p.read_text())
    notes = ""
    if notes_file is not None:
        p = Path(notes_file).expanduser()
        if not p.is_file():
            raise ReleaseError(f"model-card notes {str(p)!r} not found")
        notes = p.read_text()
    card = model_card(model, results, _run_summary(Path(run).expanduser() if run else None), notes)
    out = Path(out)
    keep = out / "__init__.py"
    with atomic_dir(out, overwrite=True) as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp, storage_dtype=torch.float16 if float16 else None)
        (tmp / "README.md").write_text(card)
        if keep.is_file():
            shutil.copy2(keep, tmp / "__init__.py")
        for image in images:
            shutil.copy2(Path(image), tmp / Path(image).name)
        total = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        if total > MAX_RELEASE_BYTES:
            raise ReleaseError(f"the release is {total / 2**20:.1f} MiB, over the {MAX_RELEASE_BYTES / 2**20:.0f} MiB "
                               "budget of weights/; store float16 (drop --float32) or shrink the model")  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m facemodel.training.release", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder to release (save_pretrained output)")
    p.add_argument("--out", default="weights", help="release folder (default: the repository's weights/)")
    p.add_argument("--evaluation", default=None, help="results.json of `facemodel evaluate` for the card's tables")
    p.add_argument("--run", default=None, help="training run folder (config and last step go into the card)")
    p.add_argument("--card-notes", default=None, help="Markdown with the card's prose")
    p.add_argument("--float32", action="store_true", help="store float32 weights (twice the size)")
    args = p.parse_args(argv)
    try:
        path = make_release(args.model, args.out, results_json=args.evaluation, run=args.run,
                            notes_file=args.card_notes, float16=not args.float32)  # fmt: skip
    except FaceModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    print(f"wrote {path} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
