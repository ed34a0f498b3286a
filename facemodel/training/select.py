"""Pick the released checkpoint by validation metrics: ``python -m facemodel.training.select``.

    python -m facemodel.training.select --run RUN --data ~/.cache/facemodel/ict4d \\
        --ict ../shared/data/ict-facekit [--n 40] [--export RUN/selected]

A run trained with ``snapshot_every`` keeps EMA exports in ``RUN/snapshots/stepNNNNNNN``; the
final export is ``RUN/model``. Every candidate is scored on

- ``val_specificity_mm``: mean distance of 256 EMA samples to the closest *validation* mesh
  (identities never trained on), read from the run's ``metrics.jsonl`` (the in-training
  evaluation at the same step; recomputed when the step has none);
- ``dec_identity`` / ``dec_expression``: the paper's decoupling percentages with the cached
  full embedding networks of the evaluation suite, ``n`` faces x ``n`` samples (seeded, the
  same codes for every candidate);
- ``spill_mm``: identity spill (``n`` faces x 5 expression codes);
- ``roughness_mm2``: high-frequency energy of 256 EMA samples
  (:func:`~facemodel.evaluation.metrics.roughness`), beside the validation meshes' figure.

Rule (:func:`choose`): first drop the candidates whose expression codes barely move the face
(``motion_mm`` under ``min_motion_mm``: by default half the motion of the ICT ground truth on
the validation identities under the same probe): a generator whose expressions do nothing is
decoupled trivially and is closest to the mean face, so it would otherwise win on both
counts. Likewise drop the candidates whose in-training diversity (logged) is under 0.75 x the
data's: early snapshots, all faces alike, are specific and decoupled for the same reason; and
those whose samples are rougher than 1.5 x the data's meshes (bumpy surfaces: an auxiliary term
steered by high-frequency displacement can buy decoupling that way). Then
keep the candidates whose validation specificity is within ``tolerance`` (5 %) of the best, then
those whose mean decoupling is within ``decoupling_tolerance`` points of the best of them (the
command's default 0.5: about the standard error of a 40 x 40 probe's percentages near 97 %, so
a difference below it is noise), and of those take the lowest spill, then the later step (with
tolerance 0: the highest mean decoupling, ties to the lower spill, then the later step). When no candidate reaches the motion floor, the rule runs on all of them and the
result says ``"motion_floor_met": false``. The scores and the choice are written to
``RUN/selection.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._fs import atomic_dir, atomic_file
from ..errors import FaceModelError, SelectionError

__all__ = ["SelectionError", "candidates", "choose", "motion_floor_met", "reference_motion", "roughness_ceiling_met",
           "score_candidate", "select", "main"]

_SNAPSHOT = re.compile(r"^step(\d{7})$")


def candidates(run: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every EMA export of ``run``, ascending by step: ``snapshots/step*``
    and ``model/`` (its step read from its config; skipped when it repeats a snapshot's step).

    Raises:
        SelectionError: the run has no export.
    """
    run = Path(run).expanduser()
    found: dict[int, Path] = {}
    snap = run / "snapshots"
    if snap.is_dir():
        for p in snap.iterdir():
            m = _SNAPSHOT.match(p.name)
            if m and (p / "config.json").is_file() and (p / "model.safetensors").is_file():
                found[int(m.group(1))] = p
    final = run / "model"
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        step = json.loads((final / "config.json").read_text()).get("training", {}).get("step")
        if isinstance(step, int) and step not in found:
            found[step] = final
    if not found:
        raise SelectionError(
            f"{str(run)!r} has no exported model (snapshots/stepNNNNNNN or model/); train with "
            "snapshot_every=N, or export with `facemodel train --out RUN --resume --export-only`"
        )
    return sorted(found.items())


def _logged_eval(run: Path, key: str, part: str = "ema") -> dict[int, float]:
    """{step: value} of one in-training evaluation figure (``eval.<part>.<key>``) of the run's log."""
    out: dict[int, float] = {}
    path = run / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        value = rec.get("eval", {}).get(part, {}).get(key)
        if isinstance(value, (int, float)):
            out[int(rec["step"])] = float(value)
    return out


def choose(records: Sequence[dict[str, Any]], *, tolerance: float = 0.05, min_motion_mm: float | None = None,
           min_diversity_mm: float | None = None, max_roughness_mm2: float | None = None,
           decoupling_tolerance: float = 0.0) -> int:
    """Index of the record to release (see the module docstring for the rule).

    Args:
        records: dicts with ``step`` and ``val_specificity_mm``; optional ``dec_identity``,
            ``dec_expression`` (percent), ``spill_mm`` and ``motion_mm`` (missing ones count as
            unknown: decoupling 0, spill infinite, motion passing the floor).
        tolerance: relative slack on the best validation specificity.
        min_motion_mm: candidates whose ``motion_mm`` is below it are left out, unless that
            leaves none (then every candidate stays; see :func:`motion_floor_met`).
        min_diversity_mm: likewise for ``diversity_mm`` (the in-training diversity of the EMA
            samples; a missing one passes): early snapshots, whose faces are all alike, score
            well on specificity and decoupling and would otherwise be chosen.
        max_roughness_mm2: then candidates whose ``roughness_mm2`` is above it are left out (a
            missing one passes), unless that leaves none of those the floors kept (then the
            ceiling is ignored, the floors are not; see :func:`roughness_ceiling_met`).
        decoupling_tolerance: percentage points; among the candidates within the specificity
            slack, those whose mean of ``dec_identity`` and ``dec_expression`` is within this of
            the best count as equally decoupled, and the lowest ``spill_mm`` of them wins (then
            the later step). 0: the highest mean decoupling wins outright.

    Raises:
        SelectionError: no records, or one without a finite ``val_specificity_mm``.
    """
    if not records:
        raise SelectionError("no candidates to choose from")
    specs = [r.get("val_specificity_mm") for r in records]
    if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in specs):
        raise SelectionError("every candidate needs a finite val_specificity_mm (run with eval_every > 0)")
    pool = [i for i in range(len(records)) if _moves(records[i], min_motion_mm) and _varied(records[i], min_diversity_mm)]
    pool = pool or list(range(len(records)))
    pool = [i for i in pool if _smooth(records[i], max_roughness_mm2)] or pool  # none smooth: the ceiling goes first
    best = min(specs[i] for i in pool)
    keep = [i for i in pool if specs[i] <= best * (1.0 + tolerance)]

    def dec(i: int) -> float:
        r = records[i]
        return 0.5 * (r.get("dec_identity", 0.0) + r.get("dec_expression", 0.0))

    if decoupling_tolerance < 0 or not math.isfinite(decoupling_tolerance):
        raise SelectionError(f"decoupling_tolerance must be a finite number >= 0 (points), got {decoupling_tolerance!r}")
    top = max(dec(i) for i in keep)
    keep = [i for i in keep if dec(i) >= top - decoupling_tolerance]

    def key(i: int) -> tuple[float, float, int]:
        d = 0.0 if decoupling_tolerance > 0 else dec(i)  # within the tolerance, decoupling no longer ranks
        return (d, -records[i].get("spill_mm", math.inf), int(records[i]["step"]))

    return max(keep, key=key)


def _moves(record: dict[str, Any], min_motion_mm: float | None) -> bool:
    m = record.get("motion_mm")
    return min_motion_mm is None or not isinstance(m, (int, float)) or m >= min_motion_mm


def _varied(record: dict[str, Any], min_diversity_mm: float | None) -> bool:
    d = record.get("diversity_mm")
    return min_diversity_mm is None or not isinstance(d, (int, float)) or d >= min_diversity_mm


def _smooth(record: dict[str, Any], max_roughness_mm2: float | None) -> bool:
    r = record.get("roughness_mm2")
    return max_roughness_mm2 is None or not isinstance(r, (int, float)) or r <= max_roughness_mm2


def roughness_ceiling_met(records: Sequence[dict[str, Any]], max_roughness_mm2: float | None) -> bool:
    """Whether any candidate is as smooth as the ceiling asks (:func:`choose` ignores it otherwise)."""
    return any(_smooth(r, max_roughness_mm2) for r in records)


def motion_floor_met(records: Sequence[dict[str, Any]], min_motion_mm: float | None) -> bool:
    """Whether any candidate reaches the motion floor (:func:`choose` ignores it otherwise)."""
    return any(_moves(r, min_motion_mm) for r in records)


def reference_motion(data: str | Path, source, spill_vertices, *, n: int = 40) -> float:
    """Motion (mm) of the ICT ground truth under the selection probe: the validation identities
    with the validation meshes' blendshape weights, the same seeds as :func:`score_candidate`."""
    from ..data.builder import ICTFaceGenerator
    from ..data.dataset import FaceDataset
    from ..evaluation.protocol import ICTGroundTruth
    from ..evaluation.spill import identity_spill

    val = FaceDataset(data, split="val")
    ids = val.identity_table("pca_weights")[val.identity_table("split") == 1]
    gt = ICTGroundTruth(ICTFaceGenerator(source), ids, np.asarray(val.meta("blendshapes")))
    s = identity_spill(gt, spill_vertices, num_faces=n, variants=5, generator=torch.Generator().manual_seed(1))
    return float(s["motion_mm"])


def score_candidate(path: Path, *, nets=None, spill_vertices=None, n: int = 40) -> dict[str, Any]:
    """Decoupling (when ``nets`` are given) and identity spill (when ``spill_vertices`` are)
    of one exported model, with fixed seeds (the same codes for every candidate)."""
    from ..evaluation.decoupling import decoupling_scores
    from ..evaluation.protocol import FaceModelAdapter
    from ..evaluation.spill import identity_spill
    from ..model import FaceModel

    model = FaceModelAdapter(FaceModel.from_pretrained(path))
    out: dict[str, Any] = {}
    if nets is not None:
        d = decoupling_scores(model, nets, n=n, m=n, generator=torch.Generator().manual_seed(0))
        out.update(dec_identity=float(d["identity"]), dec_expression=float(d["expression"]))
    if spill_vertices is not None:
        s = identity_spill(model, spill_vertices, num_faces=n, variants=5, generator=torch.Generator().manual_seed(1))
        out.update(spill_mm=float(s["mean_mm"]), motion_mm=float(s["motion_mm"]))
    return out


def _val_specificity(path: Path, data: Path, samples: int = 256) -> float:
    """Validation specificity of one export when the run's log has none for its step."""
    from ..data.dataset import FaceDataset
    from ..evaluation.metrics import specificity
    from ..model import FaceModel

    ds = FaceDataset(data, split="val")
    rows = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:1000].sort().values.numpy()
    ref = torch.from_numpy(np.asarray(ds.vertices(rows), dtype=np.float32))
    model = FaceModel.from_pretrained(path).eval()
    with torch.no_grad():  # N(0, I) codes, as the run's monitor logs them (training/monitor.py)
        v = model.sample(samples, seed=1234, expression_prior="gaussian").vertices.float()
    return float(specificity(v, ref).mean())


def _roughness_probe(data: Path, samples: int = 256):
    """(data's roughness in mm^2, a function: model folder -> its samples' roughness): the
    validation meshes (``samples`` of them, seeded) and ``samples`` seeded model samples, under
    the dataset template's cotangent Laplacian."""
    from ..data.dataset import FaceDataset
    from ..evaluation.metrics import roughness, roughness_reference
    from ..model import FaceModel

    data_value, rest, lap = roughness_reference(FaceDataset(data, split="val"), samples, seed=0)

    def of_model(path: Path) -> float:
        model = FaceModel.from_pretrained(path).eval()
        with torch.no_grad():  # N(0, I) codes, as the monitor's figures and the in-training limits
            v = model.sample(samples, seed=1234, expression_prior="gaussian").vertices.float()
        return float(roughness(v, rest, lap).mean())

    return data_value, of_model


def select(run: str | Path, *, data: str | Path, nets=None, spill_vertices=None, n: int = 40,
           tolerance: float = 0.05, min_motion_mm: float | None = None, min_diversity_fraction: float = 0.0,
           max_roughness_fraction: float = 0.0, decoupling_tolerance: float = 0.0, reuse: bool = True,
           log=print) -> dict[str, Any]:  # fmt: skip
    """Score every candidate of ``run``, choose one and write ``run/selection.json``.

    With ``reuse``, candidates already scored in ``run/selection.json`` with the same settings
    (``n``, decoupling, spill, the embedding nets'
    :meth:`~facemodel.evaluation.embedding.DecouplingNets.fingerprint`) keep their records, so
    the command can run while a training run adds snapshots, and again at its end; records
    scored by other nets are scored again.

    ``min_diversity_fraction`` > 0 leaves out candidates whose logged in-training diversity is
    under that fraction of the data's (logged beside it), and ``max_roughness_fraction`` > 0
    those whose samples' roughness is above that multiple of the validation meshes', see
    :func:`choose`. Roughness is measured for every candidate either way (about a second each).
    ``decoupling_tolerance`` (points) is :func:`choose`'s.

    Returns:
        ``{"chosen": {...record...}, "records": [...], "rule": str}``; each record has
        ``step``, ``path``, ``val_specificity_mm``, ``diversity_mm`` (when logged) and the scores
        of :func:`score_candidate`, and ``roughness_mm2``; the result also has
        ``data_roughness_mm2``.
    """
    run = Path(run).expanduser()
    logged = _logged_eval(run, "val_specificity_mm")
    diversity = _logged_eval(run, "diversity_mm")
    data_diversity = max(_logged_eval(run, "diversity_mm", part="data").values(), default=None)
    min_diversity_mm = (min_diversity_fraction * data_diversity
                        if min_diversity_fraction > 0 and data_diversity is not None else None)  # fmt: skip
    wanted = {"n": n, "decoupling": nets is not None, "spill": spill_vertices is not None,
              "nets": nets.fingerprint() if nets is not None else None}
    previous: dict[tuple[int, str], dict] = {}
    if reuse and (run / "selection.json").is_file():  # records of an earlier call with the same settings
        try:
            old = json.loads((run / "selection.json").read_text())
            if old.get("settings") == wanted:
                previous = {(r["step"], r["path"]): r for r in old["records"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            previous = {}
    data_roughness, model_roughness = _roughness_probe(Path(data))
    max_roughness_mm2 = max_roughness_fraction * data_roughness if max_roughness_fraction > 0 else None
    records = []
    for step, path in candidates(run):
        rec: dict[str, Any] = previous.get((step, str(path)), {})
        if not rec:
            rec = {"step": step, "path": str(path), "val_specificity_mm": logged.get(step)}
            if rec["val_specificity_mm"] is None:
                rec["val_specificity_mm"] = _val_specificity(path, Path(data))
                rec["val_specificity_source"] = "recomputed"
            rec.update(score_candidate(path, nets=nets, spill_vertices=spill_vertices, n=n))
            rec["roughness_mm2"] = model_roughness(path)
            log(json.dumps(rec))
        elif "roughness_mm2" not in rec:  # a record of an older version
            rec["roughness_mm2"] = model_roughness(path)
        if step in diversity:  # read from the log, so reused records of older versions get it too
            rec["diversity_mm"] = diversity[step]
        records.append(rec)
    i = choose(records, tolerance=tolerance, min_motion_mm=min_motion_mm, min_diversity_mm=min_diversity_mm,
               max_roughness_mm2=max_roughness_mm2, decoupling_tolerance=decoupling_tolerance)  # fmt: skip
    met = motion_floor_met(records, min_motion_mm)
    if not met:
        log(f"WARNING: no candidate's expressions move the face by {min_motion_mm:.3f} mm (motion_mm); "
            "the choice ignores the motion floor")  # fmt: skip
    smooth = roughness_ceiling_met(records, max_roughness_mm2)
    if not smooth:
        log(f"WARNING: every candidate's samples are rougher than {max_roughness_mm2:.3f} mm^2 (roughness_mm2; the "
            f"validation meshes: {data_roughness:.3f}); the choice ignores the roughness ceiling")  # fmt: skip
    result = {
        "chosen": records[i],
        "records": records,
        "rule": ("motion_mm at least min_motion_mm, then " if min_motion_mm is not None else "")
        + ("diversity_mm at least min_diversity_mm, then " if min_diversity_mm is not None else "")
        + ("roughness_mm2 at most max_roughness_mm2, then " if max_roughness_mm2 is not None else "")
        + f"val_specificity_mm within {tolerance:.0%} of the best, then "
        + (f"the mean of dec_identity and dec_expression within {decoupling_tolerance:g} points of the best, then "
           "the lowest spill_mm, then the later step" if decoupling_tolerance > 0 else
           "the highest mean of dec_identity and dec_expression, then the lower spill_mm, then the later step"),
        "decoupling_tolerance": decoupling_tolerance,
        "min_motion_mm": min_motion_mm,
        "min_diversity_mm": min_diversity_mm,
        "data_diversity_mm": data_diversity,
        "max_roughness_mm2": max_roughness_mm2,
        "data_roughness_mm2": data_roughness,
        "motion_floor_met": met,
        "roughness_ceiling_met": smooth,
        "settings": wanted,
    }
    with atomic_file(run / "selection.json", "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m facemodel.training.select", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="training run folder (snapshots/, model/, metrics.jsonl)")
    p.add_argument("--data", required=True, help="the run's dataset folder (validation split, embedding nets' cache key)")
    p.add_argument("--ict", default=None, help="ICT-FaceKit folder: decoupling and identity spill (omit: specificity only)")
    p.add_argument("--n", type=int, default=40, help="faces x samples of the decoupling probe (default 40)")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--min-motion-fraction", type=float, default=0.5,
                   help="leave out candidates whose expressions move the face less than this fraction of the ICT "
                        "ground truth's motion under the same probe (needs --ict; 0: no floor)")  # fmt: skip
    p.add_argument("--min-diversity-fraction", type=float, default=0.75,
                   help="leave out candidates whose in-training diversity (logged) is under this fraction of the "
                        "data's (0: no floor)")  # fmt: skip
    p.add_argument("--max-roughness-fraction", type=float, default=1.5,
                   help="leave out candidates whose samples are rougher (roughness_mm2) than this multiple of the "
                        "validation meshes' (0: no ceiling)")  # fmt: skip
    p.add_argument("--decoupling-tolerance", type=float, default=0.5,
                   help="percentage points of mean decoupling counted as a tie, broken by the lower identity spill "
                        "(default 0.5: about a 40 x 40 probe's standard error; 0: the highest decoupling wins)")  # fmt: skip
    p.add_argument("--export", default=None, help="copy the chosen model folder here (replaced atomically)")
    p.add_argument("--rescore", action="store_true", help="score every candidate again (default: reuse selection.json)")
    args = p.parse_args(argv)
    try:
        nets = verts = floor = None
        if args.min_motion_fraction < 0:
            raise SelectionError("--min-motion-fraction must be >= 0 (0 turns the motion floor off)")
        if not 0 <= args.min_diversity_fraction < 1:
            raise SelectionError("--min-diversity-fraction must be in [0, 1) (0 turns the diversity floor off)")
        if args.max_roughness_fraction < 0:
            raise SelectionError("--max-roughness-fraction must be >= 0 (0 turns the roughness ceiling off)")
        if not (args.decoupling_tolerance >= 0 and math.isfinite(args.decoupling_tolerance)):
            raise SelectionError("--decoupling-tolerance must be a finite number >= 0 (points; 0: the highest wins)")
        if args.ict is not None:
            from ..data.ict import ICTSource
            from ..evaluation.embedding import load_or_train_decoupling_nets
            from ..evaluation.spill import identity_only_vertices

            source = ICTSource(args.ict)
            nets = load_or_train_decoupling_nets(args.data, source)
            verts = identity_only_vertices(source)
            if args.min_motion_fraction > 0:
                ref = reference_motion(args.data, source, verts, n=args.n)
                floor = args.min_motion_fraction * ref
                print(f"motion floor: {floor:.3f} mm ({args.min_motion_fraction:g} x the ICT ground truth's {ref:.3f} mm)")
        result = select(args.run, data=args.data, nets=nets, spill_vertices=verts, n=args.n, tolerance=args.tolerance,
                        min_motion_mm=floor, min_diversity_fraction=args.min_diversity_fraction,
                        max_roughness_fraction=args.max_roughness_fraction,
                        decoupling_tolerance=args.decoupling_tolerance, reuse=not args.rescore)  # fmt: skip
        chosen = result["chosen"]
        print(f"chosen: step {chosen['step']} ({chosen['path']})")
        if args.export:
            with atomic_dir(args.export, overwrite=True) as tmp:
                for f in Path(chosen["path"]).iterdir():
                    shutil.copy2(f, tmp / f.name)
            print(f"copied to {args.export}")
    except FaceModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
