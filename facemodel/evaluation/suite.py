"""The whole evaluation protocol as one call: ``facemodel evaluate``.

:func:`evaluate` loads our model, fits (or loads cached) baselines on the same dataset,
trains (or loads cached) the decoupling embedding networks, measures Table 1 (decoupling,
diversity, specificity, identity spill) and Table 2 (sparse reconstruction, Adam and fast
solvers) for every model, draws the paper's figures, and writes into ``out``:

- ``results.json``: every number (re-render with :func:`facemodel.evaluation.report.render_report`),
- ``report.md``: the tables laid out like the paper's, with the published numbers for reference,
- ``figures/*.png``.

The output folder is written atomically (a temporary sibling renamed at the end), so a
failed or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .._fs import atomic_dir
from .protocol import EvaluationError, FaceModelAdapter, ICTGroundTruth, ShapeModel

__all__ = ["EvaluationSettings", "evaluate", "fit_or_load_baselines", "default_cache_root"]

log = logging.getLogger(__name__)


class EvaluationSettings(BaseModel):
    """Sizes of the protocol. :meth:`full` is the paper's; :meth:`quick_settings` a smoke-test size."""

    model_config = ConfigDict(extra="forbid")

    quick: bool = False
    seed: int = 0
    num_pairs: int = Field(10_000, ge=2)
    specificity_samples: int = Field(1000, ge=1)
    decoupling_n: int = Field(100, ge=1)
    decoupling_m: int = Field(100, ge=1)
    spill_faces: int = Field(100, ge=1)
    spill_variants: int = Field(10, ge=1)
    roughness_samples: int = Field(256, ge=1)
    lambdas: tuple[float, ...] = (0.0, 0.01, 10.0)
    reconstruction_per_kind: int | None = Field(10, ge=1)  # None = every test mesh (hours for COMA)
    adam_iterations: int = Field(500, ge=1)
    adam_lr: float = Field(0.05, gt=0)
    baselines: tuple[str, ...] = ("linear", "multilinear", "autoencoder")
    identity_dim: int = 65
    expression_dim: int = 20
    autoencoder_steps: int = 1600  # ~8 min on one CPU core (COMA trains 300 epochs; see the baseline docs)
    baseline_max_meshes: int | None = 12_000
    ground_truth: bool = True

    @classmethod
    def full(cls, **overrides) -> "EvaluationSettings":
        return cls(**overrides)

    @classmethod
    def quick_settings(cls, **overrides) -> "EvaluationSettings":
        base = dict(quick=True, num_pairs=500, specificity_samples=64, decoupling_n=16, decoupling_m=16,
                    spill_faces=16, spill_variants=4, reconstruction_per_kind=6, adam_iterations=150,
                    autoencoder_steps=60, baseline_max_meshes=600)  # fmt: skip
        base.update(overrides)
        return cls(**base)


def default_cache_root() -> Path:
    """``$FACEMODEL_CACHE`` or ``~/.cache/facemodel`` (baselines and embedding nets are cached here)."""
    return Path(os.environ.get("FACEMODEL_CACHE", Path.home() / ".cache" / "facemodel")).expanduser()


def _checksum(root: Path) -> str:
    from ..data.store import read_manifest

    return read_manifest(root).checksum or "nochecksum"


def fit_or_load_baselines(data_root: str | os.PathLike, settings: EvaluationSettings, *,
                          cache_dir: str | os.PathLike | None = None) -> list[ShapeModel]:  # fmt: skip
    """The baselines named in ``settings``, fitted on ``data_root``'s training split once and
    cached under ``cache_dir/baselines/<dataset checksum>-<full|quick>/<kind>``."""
    from .baselines import BASELINES, AutoencoderModel, load_baseline

    root = Path(data_root).expanduser()
    unknown = [b for b in settings.baselines if b not in BASELINES]
    if unknown:
        raise EvaluationError(f"unknown baselines {unknown}; choose from {sorted(BASELINES)}")
    folder = (Path(cache_dir).expanduser() if cache_dir else default_cache_root()) / "baselines"
    folder = folder / f"{_checksum(root)[:16]}-{'quick' if settings.quick else 'full'}"
    out: list[ShapeModel] = []
    for kind in settings.baselines:
        path = folder / kind
        model = None
        if (path / "config.json").is_file():
            try:
                model = load_baseline(path)
            except EvaluationError as exc:
                log.warning("cached baseline %s unreadable (%s); refitting", path, exc)
        if model is None:
            t = time.perf_counter()
            kwargs: dict[str, Any] = dict(identity_dim=settings.identity_dim, expression_dim=settings.expression_dim,
                                          max_meshes=settings.baseline_max_meshes, seed=settings.seed)  # fmt: skip
            if BASELINES[kind] is AutoencoderModel:
                kwargs["steps"] = settings.autoencoder_steps
            model = BASELINES[kind].fit(root, **kwargs)
            model.save(path, overwrite=True)
            log.info("fitted baseline %s in %.1f s", kind, time.perf_counter() - t)
        out.append(model)
    return out


def _lam_key(x: float) -> str:
    return f"{x:g}"


def _recon_summary(r: dict[str, Any] | None, lambdas: Sequence[float]) -> dict[str, Any] | None:
    if r is None:
        return None
    out: dict[str, Any] = {}
    total = 0.0
    for lam in lambdas:
        v = r["lambdas"][lam]
        out[_lam_key(lam)] = v["rmse_mm"]
        out[f"face_{_lam_key(lam)}"] = v["rmse_face_mm"]
        total += v["seconds"]
    novel = r["lambdas"][lambdas[0]].get("by_group", {}).get("novel")
    out["novel_0"] = novel["rmse_mm"] if novel else None
    out["time_per_mesh"] = f"{1000 * total / len(lambdas) / r['meshes']:.2f} ms"
    return out


def _write_figures(models: list[ShapeModel], recon: dict[str, Any], test, folder: Path) -> dict[str, str]:
    from ..geometry.render import save_png
    from .figures import factor_figure, reconstruction_figure, samples_figure, transfer_figure

    folder.mkdir(parents=True, exist_ok=True)
    figs = {
        "Fig. 3: random samples, same expression code, same identity code": ("samples.png", samples_figure(models)),
        "Fig. 4: expression transfer": ("transfer.png", transfer_figure(models)),
        "Fig. 8: each row shares an identity code": ("same_identity.png", factor_figure(models, "identity")),
        "Fig. 9: each row shares an expression code": ("same_expression.png", factor_figure(models, "expression")),
    }
    if recon:
        # the first meshes of the 'novel' kind (unseen expression combinations), else the first ones
        kinds = np.asarray(test.kinds)
        rows = np.flatnonzero(kinds == "novel")[:3]
        rows = rows if len(rows) else np.arange(min(3, len(kinds)))
        fits = {}
        for m in models:
            r = recon.get(m.name)
            if r is not None:
                codes = r["lambdas"][0.0]["codes"][torch.as_tensor(rows)]
                fits[f"{m.name} (λ=0)"] = m.decode_batched(codes).numpy()
        figs["Fig. 10a: sparse reconstruction (Adam, λ = 0)"] = (
            "reconstruction.png", reconstruction_figure(test.vertices[rows].numpy(), fits, models[0].faces))
    paths = {}
    for title, (name, image) in figs.items():
        save_png(image, folder / name)
        paths[title] = f"figures/{name}"
    return paths


def evaluate(
    model_path: str | os.PathLike,
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    settings: EvaluationSettings | None = None,
    ict_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    command: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """Run the evaluation protocol and write ``results.json``, ``report.md`` and figures.

    Args:
        model_path: our model (a ``save_pretrained`` folder, a Hub id, or ``None`` for the
            released weights).
        data_root: the ICT 4D dataset folder the model was trained on.
        out: output folder (must not exist unless ``overwrite``).
        settings: protocol sizes (default :meth:`EvaluationSettings.full`).
        ict_dir: the ICT-FaceKit folder (ground-truth generator, embedding-net training data);
            default ``FACEMODEL_ICT_DIR`` or ``../shared/data/ict-facekit``.
        cache_dir: where fitted baselines and embedding nets are cached.

    Returns:
        The results dictionary (also saved as ``results.json``).
    """
    from ..data.builder import ICTFaceGenerator
    from ..data.dataset import FaceDataset
    from ..data.ict import ICTSource
    from ..model import FaceModel
    from .decoupling import decoupling_scores
    from .embedding import load_or_train_decoupling_nets
    from .metrics import data_diversity, model_diversity, model_specificity, roughness, roughness_reference
    from .reconstruction import load_test_meshes, sparse_reconstruction
    from .report import render_report
    from .spill import identity_only_vertices, identity_spill

    settings = settings or EvaluationSettings.full()
    root = Path(data_root).expanduser()
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise EvaluationError(f"{str(out)!r} exists; pass overwrite=True (--overwrite) or choose another folder")
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0
        if progress:
            log.info("%s: %.1f s", name, timings[name])

    t0 = time.perf_counter()
    if model_path is not None and Path(str(model_path)).expanduser().exists():
        model_path = str(Path(str(model_path)).expanduser())
    ours = FaceModelAdapter(FaceModel.from_pretrained(model_path))
    train = FaceDataset(root, split="train")
    if ours.num_vertices != train.template.num_vertices:
        raise EvaluationError(f"the model has {ours.num_vertices} vertices but the dataset {train.template.num_vertices}; "
                              "evaluate a model on the dataset it was trained on")  # fmt: skip
    source = ICTSource(ict_dir)
    gen = ICTFaceGenerator(source)
    tick("load model and data", t0)

    t0 = time.perf_counter()
    baselines = fit_or_load_baselines(root, settings, cache_dir=cache_dir)
    tick("baselines (fit or cache)", t0)
    t0 = time.perf_counter()
    nets = load_or_train_decoupling_nets(root, source, quick=settings.quick,
                                         cache_dir=(Path(cache_dir) / "embeddings") if cache_dir else None,
                                         progress=progress)  # fmt: skip
    tick("embedding networks (train or cache)", t0)

    models: list[ShapeModel] = [ours, *baselines]
    if settings.ground_truth:
        test_ids = train.identity_table("pca_weights")[train.identity_table("split") == 2]
        from .embedding import diverse_expressions

        test_blend = np.asarray(FaceDataset(root, split="test").meta("blendshapes"))
        rng = np.random.default_rng(settings.seed)
        # every test identity; 40 visibly different test expressions (farthest-point sample), so
        # that "same expression" is decidable from a render (near-neutral frames are not)
        chosen, _ = diverse_expressions(test_blend, source, min(40, len(test_blend)), rng=rng)
        gt = ICTGroundTruth(gen, test_ids, test_blend[chosen])
        gt.name = "ICT generator (ground truth)"
    else:
        gt = None

    results: dict[str, Any] = {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
                   f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "settings": settings.model_dump(mode="json"),
        "model": str(model_path),
        "table1": {},
        "table2": {},
        "notes": [],
    }
    test = load_test_meshes(root, max_per_kind=settings.reconstruction_per_kind, seed=settings.seed)
    results["dataset"] = {"root": str(root), "checksum": _checksum(root), "train_meshes": len(train),
                          "train_identities": train.num_identity_classes, "test_meshes": len(test.vertices)}  # fmt: skip
    results["settings"].update(reconstruction_meshes=len(test.vertices),
                               reconstruction_kinds=sorted(set(np.asarray(test.kinds).tolist())),
                               landmarks=f"iBUG-{len(test.landmarks)}",
                               adam=f"Adam lr {settings.adam_lr}, {settings.adam_iterations} iterations, codes from "
                                    f"the prior (seed {settings.seed})")  # fmt: skip

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(settings.seed)
    results["data"] = {"diversity": {k: float(v) for k, v in data_diversity(train, settings.num_pairs, generator=g).items()
                                     if k in ("global", "identity", "expression")}}  # fmt: skip
    tick("data diversity", t0)
    results["data"]["roughness"], rest, lap = roughness_reference(train, settings.roughness_samples, seed=settings.seed)
    spill_vertices = identity_only_vertices(gen)
    results["settings"]["spill_vertices"] = int(len(spill_vertices))
    results["embedding"] = nets.summary() if hasattr(nets, "summary") else {}

    recon: dict[str, Any] = {}
    for m in models + ([gt] if gt is not None else []):
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        d = decoupling_scores(m, nets, n=settings.decoupling_n, m=settings.decoupling_m,
                              generator=torch.Generator().manual_seed(settings.seed))  # fmt: skip
        row.update(dec_id=d["identity"], dec_exp=d["expression"])
        tick(f"{m.name}: decoupling", t0)
        t0 = time.perf_counter()
        div = model_diversity(m, settings.num_pairs, generator=torch.Generator().manual_seed(settings.seed))
        row.update(div=div["global"], div_id=div["identity"], div_exp=div["expression"])
        tick(f"{m.name}: diversity", t0)
        if m is not gt:
            t0 = time.perf_counter()
            sp = model_specificity(m, train, settings.specificity_samples, generator=torch.Generator().manual_seed(settings.seed))
            row["spec"] = sp["mean"]
            tick(f"{m.name}: specificity", t0)
        t0 = time.perf_counter()
        spill = identity_spill(m, spill_vertices, num_faces=settings.spill_faces, variants=settings.spill_variants,
                               generator=torch.Generator().manual_seed(settings.seed))  # fmt: skip
        row.update(spill=spill["mean_mm"], spill_ratio=spill.get("ratio"))
        tick(f"{m.name}: identity spill", t0)
        v = m.sample(settings.roughness_samples, generator=torch.Generator().manual_seed(settings.seed))
        row["rough"] = float(roughness(v, rest, lap).mean()) if v.shape[1] == len(rest) else None
        results["table1"][m.name] = {k: (None if v is None else float(v)) for k, v in row.items()}
        if m is gt:
            continue
        t0 = time.perf_counter()
        adam = sparse_reconstruction(m, test, lambdas=settings.lambdas, solver="adam", iterations=settings.adam_iterations,
                                     lr=settings.adam_lr, seed=settings.seed)  # fmt: skip
        fast = sparse_reconstruction(m, test, lambdas=settings.lambdas, solver="fast")
        recon[m.name] = adam
        results["table2"][m.name] = {"adam": _recon_summary(adam, settings.lambdas),
                                     "fast": _recon_summary(fast, settings.lambdas)}  # fmt: skip
        tick(f"{m.name}: sparse reconstruction", t0)
    if gt is not None:
        results["notes"].append(
            "The ICT generator row is the dataset's own generator (all test identities, 40 visibly different test "
            "expressions): its "
            "decoupling is the ceiling the embedding networks allow; its identity spill is above 0 because ICT's "
            "blendshapes move every vertex a little.")
    results["notes"].append("Paper numbers come from other data and other embedding networks: compare rows of "
                            "this report with each other, not with the paper.")  # fmt: skip

    with atomic_dir(out, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        results["figures"] = _write_figures(models, recon, test, tmp / "figures")
        tick("figures", t0)
        results["timings"] = timings
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
        (tmp / "report.md").write_text(render_report(results))
    return results


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
