"""The training loop: WGAN-GP with auxiliary classifiers, feature loss and Laplacian
regulariser (paper §4.3, §5.1), resumable, on CPU or CUDA, optionally under torchrun."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .._fs import atomic_dir
from ..data.dataset import FaceDataset
from ..errors import FaceModelError
from ..model import FaceModel, FaceModelConfig
from ..networks.config import Factor, GeneratorConfig
from ..networks.generator import Generator
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .codes import CodeBatch, LabelCodes, sample_codes
from .config import TrainConfig
from .discriminator import Critic, critic_uv
from .labels import factor_labels
from .monitor import Monitor, append_record, truncate_records
from .reanchor import reanchor_first_layer
from .sampler import EpochSampler
from .terms import TERMS, Contribution, CriticContext, GeneratorContext, Setup, Term

__all__ = ["Trainer"]

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Owns models, optimisers, data and the run folder of one training run.

    Args:
        config: :class:`TrainConfig`.
        out: run folder (created); holds ``config.json``, ``checkpoint.pt``,
            ``metrics.jsonl``, ``samples/``, ``snapshots/`` (``snapshot_every``) and, after
            :meth:`export`, ``model/``.
        resume: continue from ``out/checkpoint.pt`` (models, optimisers, EMA, sampler, RNG).
        progress: show a progress bar.
    """

    def __init__(self, config: TrainConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.out = Path(out).expanduser()
        self.progress = progress
        self._setup_processes()
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        np.random.seed(config.seed)
        # ---- data, labels, loss terms ---------------------------------------------------
        self.data = FaceDataset(config.data, split="train")
        self.template = self.data.template
        self.template_t = torch.from_numpy(self.template.vertices).to(self.device)
        self._offsets_t = torch.from_numpy(self.data.offsets()).to(self.device) if config.data_on_device else None
        labels = {s.name: factor_labels(self.data, s.labels) for s in config.factors}
        self.label_names = {k: names for k, (_, names) in labels.items()}
        self.real_labels = {k: torch.from_numpy(v) for k, (v, _) in labels.items()}
        self.gen_config = GeneratorConfig(
            num_vertices=self.template.num_vertices,
            factors=tuple(Factor(name=s.name, code_dim=s.code_dim, num_labels=len(self.label_names[s.name]))
                          for s in config.factors),  # fmt: skip
            noise_dim=config.noise_dim,
            hidden=config.hidden,
            displacement_scale_mm=config.displacement_scale_mm,
            factor_hidden=tuple(config.factor_hidden) if config.factor_hidden is not None else None,
        )
        self.classified = tuple(s.name for s in config.factors) if config.classification.factors == "all" else ("identity",)
        self.terms = self._setup_terms()
        # ---- models, optimisers, run folder -----------------------------------------------
        self._build_models()
        self.sampler = EpochSampler(len(self.data), self.batch, config.seed, rank=self.rank, world_size=self.world)
        self.step = 0
        self._resumed = False
        steps_per_epoch = len(self.data) / (config.batch_size * config.critic_steps)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "samples").mkdir(exist_ok=True)
        if resume:
            self.load(self.out / CHECKPOINT)
        elif self.is_main:
            config.to_file(self.out / "config.json")
        self.monitor = Monitor(self.data, config.data, self.template_t, samples=config.eval_samples, seed=config.seed)
        # fixed codes for sample renders: their own generator, so resuming does not shift the run's RNG
        g = torch.Generator().manual_seed(config.seed + 1)
        self._fixed_z = torch.randn(16, self.gen_config.code_dim, generator=g).to(self.device)

    def _setup_processes(self) -> None:
        """Device, threads, and the process group of a torchrun run."""
        c = self.config
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = _device(c.device)
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        if self.world > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        if c.batch_size % (2 * self.world):
            raise ValueError(f"batch_size {c.batch_size} must be a multiple of 2 x world size {self.world}")
        self.batch = c.batch_size // self.world  # per rank: the global batch stays config.batch_size

    def _setup_terms(self) -> dict[str, Term]:
        """The loss terms that are on (weight > 0), set up from the training data, in loss order."""
        setup = Setup(config=self.config, data=self.data, gen_config=self.gen_config, template=self.template,
                      device=self.device, labels=self.real_labels, classified=self.classified)  # fmt: skip
        terms = {T.name: T(getattr(self.config, T.name)) for T in TERMS}
        for term in terms.values():
            if term.on:
                term.setup(setup)
        return terms

    def _build_models(self) -> None:
        """Generator, its EMA, critic, label codes and optimisers (identical on every rank)."""
        c = self.config
        self.G = Generator(self.gen_config).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.uv = critic_uv(self.template, stiffness=c.uv_stiffness, face_vertices=c.uv_face_vertices)
        targets = {k: n for t in self.terms.values() if t.on for k, n in t.critic_targets.items()}
        self.D = Critic(self.uv, self.template.faces, {f.name: f.num_labels for f in self.gen_config.factors},
                        resolution=c.resolution, displacement_scale_mm=c.displacement_scale_mm,
                        targets=targets or None).to(self.device)  # fmt: skip
        self.codes = LabelCodes(self.gen_config, seed=c.seed).to(self.device)
        if c.classification.label_codes == "anchored":
            self._anchor_label_codes()
        if self.world > 1:  # identical start everywhere; then per-rank noise for codes and instance noise
            for module in (self.G, self.G_ema, self.D):
                for t in list(module.parameters()) + [b for b in module.buffers() if not b.is_sparse and b.layout == torch.strided]:
                    dist.broadcast(t.data, src=0)
            torch.manual_seed(c.seed + 1000 * self.rank)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=tuple(c.betas))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=tuple(c.betas))
        self._G_fwd = torch.compile(self.G) if c.compile else self.G
        self._D_img = torch.compile(self.D.from_image) if c.compile else self.D.from_image

    def _anchor_label_codes(self) -> None:
        """``classification.label_codes = "anchored"``: each identity label's code is its identity's
        anchor code, each expression label's the mean expression-anchor code of the training meshes
        with that label, so asking for a label asks for what the anchors reproduce (the data's
        expression at its strength) instead of a random code the classifier merely accepts."""
        from .config import ConfigError

        ident, expr = self.terms["identity_anchor"], self.terms["expression_anchor"]
        if not (ident.on and expr.on):
            raise ConfigError("classification.label_codes='anchored' needs identity_anchor and expression_anchor "
                              "on (weight > 0): the label codes are their anchor codes")  # fmt: skip
        for f in self.config.factors:
            if f.labels not in ("identity", "expression"):
                continue
            labels = self.real_labels[f.name].numpy()
            codes = self.codes.codes(f.name)
            for k in range(codes.shape[0]):
                rows = np.flatnonzero(labels == k)
                if rows.size == 0:
                    log.warning("label %d of %s has no training mesh: its code stays a random draw", k, f.name)
                    continue
                if f.labels == "identity":
                    codes[k] = ident.codes[int(rows[0])].to(codes)
                else:
                    codes[k] = expr.fit.codes(rows, self.device).mean(0).to(codes)
        log.info("label codes: anchored (identity anchors, mean expression-anchor codes of the labelled meshes)")

    # ---- helpers ------------------------------------------------------------------------
    def _autocast(self):
        if self.config.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _displacements(self, rows: np.ndarray) -> torch.Tensor:
        """(M, V, 3) float32 displacements (mm) of training rows, on the training device."""
        if self._offsets_t is not None:
            return self._offsets_t[torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)].float()
        v = torch.from_numpy(self.data.vertices(rows)).to(self.device, non_blocking=True)
        return v - self.template_t

    def _real_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], np.ndarray]:
        """(B, V, 3) mm displacements of the next training rows, their classified labels, the rows."""
        rows = self.sampler.next()
        labels = {k: self.real_labels[k][rows].to(self.device) for k in self.classified}
        return self._displacements(rows), labels, rows

    def _codes(self) -> CodeBatch:
        return sample_codes(self.step, self.batch, self.gen_config, self.codes, classified=self.classified,
                            prior_pairs=self.config.prior_pairs, device=self.device)  # fmt: skip

    def _critic(self, d: torch.Tensor, noise: float):
        img = self.D.image(d.float())  # the mapping layer runs in float32
        if noise > 0:
            img = img + noise * torch.randn_like(img)
        with self._autocast():
            return self._D_img(img)

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        """(M, D) codes -> (M, V, 3) float32 displacements (mm) of the training generator."""
        with self._autocast():
            return self._G_fwd(z).float()

    def _step_rng(self, tag: int) -> np.random.Generator:
        """numpy generator of this step and term (``tag``), different on every rank of a multi-GPU
        run (each rank draws its own anchor rows; rank 0 keeps the single-process stream)."""
        key = [self.config.seed, self.step, tag] + ([self.rank] if self.rank else [])
        return np.random.default_rng(key)

    def _update(self, opt: torch.optim.Optimizer, module: torch.nn.Module, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:  # average gradients by hand: works with the penalty's double backward
            for p in module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        opt.step()

    def _sum(self, parts: list[Contribution]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss (the terms' weighted contributions added in loss order) and their logs; the
        paper's terms that are off log 0."""
        loss, logs = None, {}
        for value, term_logs in parts:
            if value is not None:
                loss = value if loss is None else loss + value
            logs.update(term_logs)
        for term in self.terms.values():
            if term.always_logged and not term.on:
                logs.update({name: 0.0 for name in term.logs})
        return loss, logs

    def _generator_context(self, batch: CodeBatch, d: torch.Tensor, out) -> GeneratorContext:
        return GeneratorContext(batch=batch, d=d, out=out, config=self.config, data=self.data, template=self.template_t,
                                device=self.device, generate=self._generate, rng=self._step_rng,
                                code_dim=self.gen_config.code_dim)  # fmt: skip

    # ---- steps --------------------------------------------------------------------------
    def critic_step(self) -> dict[str, float]:
        c = self.config
        real, labels, rows = self._real_batch()
        cb = self._codes()
        with torch.no_grad():
            fake = self._generate(cb.z)
        ctx = CriticContext(real=real, fake=fake, out_real=self._critic(real, c.instance_noise),
                            out_fake=self._critic(fake, c.instance_noise), rows=rows, labels=labels, critic=self.D,
                            device=self.device)  # fmt: skip
        loss, logs = self._sum([t.critic(ctx) for t in self.terms.values() if t.on])
        self._update(self.opt_D, self.D, loss)
        return {"d_loss": loss.item(), **logs}

    def generator_step(self) -> dict[str, float]:
        c = self.config
        batch = self._codes()
        d = self._generate(batch.z)
        ctx = self._generator_context(batch, d, self._critic(d, c.instance_noise))
        loss, logs = self._sum([t.generator(ctx) for t in self.terms.values() if t.on])
        self._update(self.opt_G, self.G, loss)
        self._update_ema()
        return {"g_loss": loss.item(), **logs}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up for short runs
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1 - decay)

    def train_step(self) -> dict[str, float]:
        """One generator step preceded by ``critic_steps`` critic steps."""
        self.G.train()
        self.D.train()
        logs: dict[str, float] = {}
        for _ in range(self.config.critic_steps):
            for k, v in self.critic_step().items():
                logs[k] = logs.get(k, 0.0) + v / self.config.critic_steps
        logs.update(self.generator_step())
        self.step += 1
        return logs

    # ---- evaluation, samples ------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Specificity and diversity (mm) of the raw and EMA generators (:class:`~.monitor.Monitor`)."""
        return self.monitor.evaluate({"raw": self.G, "ema": self.G_ema}, self.gen_config.code_dim)

    @torch.no_grad()
    def render_samples(self, path: Path) -> None:
        from ..geometry.render import render_grid, save_png

        v = (self.G_ema(self._fixed_z[:8]) + self.template_t).cpu().numpy()
        save_png(render_grid(v, self.template.faces, size=160, ncols=4), path)

    # ---- checkpoints, export ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "G": self.G.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "codes": self.codes.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "config": self.config.model_dump(mode="json"),
            "dataset_checksum": self.data.manifest.checksum,
        }

    def save(self) -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(self.out / CHECKPOINT, self.state_dict())

    def load(self, path: Path) -> None:
        state = load_checkpoint(path)
        if state["dataset_checksum"] != self.data.manifest.checksum:
            raise CheckpointError(f"checkpoint {str(path)!r} was trained on another dataset (checksum differs)")
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.codes.load_state_dict(state["codes"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._resumed = True  # train() drops log lines written after this checkpoint

    def warm_start(self, path: str | os.PathLike, *, reanchor: bool = False) -> list[str]:
        """Start from another run's checkpoint with *this* run's recipe (a changed loss, say).

        Loads the generators, critic, label codes, generator optimiser, data order and step;
        critic heads this recipe adds (the regressors) start fresh, and so does the critic's
        optimiser when the critic's parameters changed. The dataset must be the same, unless
        ``reanchor``.

        Args:
            path: the other run's ``checkpoint.pt``.
            reanchor: the checkpoint was trained on another build of the data (more identities,
                say; its folder, from the checkpoint's config, must still be on disk): the
                generators' first layer is re-expressed in this dataset's identity and
                expression anchors (:mod:`facemodel.training.reanchor`: what the generator
                computes does not change, its codes now mean what this data's anchors say);
                label codes, critic heads of another size and the data order start fresh, the
                step carries on. Needs identity and expression anchoring on.

        Returns:
            the critic parameters that were not in the checkpoint (newly initialised).

        Raises:
            CheckpointError: unreadable checkpoint, another dataset (without ``reanchor``), or a
                generator of another shape; with ``reanchor``: the checkpoint's dataset missing
                or changed.
            ConfigError: ``reanchor`` without both anchoring terms on.
        """
        state = load_checkpoint(Path(path))
        same_data = state["dataset_checksum"] == self.data.manifest.checksum
        if not same_data and not reanchor:
            raise CheckpointError(f"checkpoint {str(path)!r} was trained on another dataset (checksum differs); to carry "
                                  "it onto this dataset pass --reanchor (Trainer.warm_start(..., reanchor=True))")  # fmt: skip
        if reanchor and not same_data:
            maps = self._reanchor_maps(state, path)
            for key in ("G", "G_ema"):
                state[key] = reanchor_first_layer(state[key], [(self.gen_config.code_slices()[n], m) for n, m in maps.items()])
            log.info("re-anchored onto %s: %s", self.data.root,
                     "; ".join(f"{n} code map residual {m.residual:.3g}" for n, m in maps.items()))  # fmt: skip
        try:
            self.G.load_state_dict(state["G"])
            self.G_ema.load_state_dict(state["G_ema"])
            self.opt_G.load_state_dict(state["opt_G"])
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} has a generator of another shape: {exc}") from exc
        own_codes = self.codes.state_dict()
        if same_data:  # label codes and critic entries of another shape (a factor with more labels) start fresh
            self.codes.load_state_dict({k: v if v.shape == own_codes[k].shape else own_codes[k] for k, v in state["codes"].items()})
        own = self.D.state_dict()
        resized = [k for k, v in state["D"].items() if k in own and v.shape != own[k].shape]
        result = self.D.load_state_dict({k: v for k, v in state["D"].items() if k not in resized}, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"checkpoint {str(path)!r} has critic parameters this recipe lacks: "
                                  f"{result.unexpected_keys[:4]}; use the same factors and resolution")  # fmt: skip
        if not result.missing_keys:
            self.opt_D.load_state_dict(state["opt_D"])
        if same_data:
            self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        return list(result.missing_keys)  # includes the resized entries

    def _reanchor_maps(self, state: dict, path) -> dict:
        """Per factor name, the :class:`~facemodel.training.reanchor.CodeMap` from this dataset's
        anchor codes to those of the checkpoint's dataset."""
        from .anchoring import fit_expression_anchor
        from .config import ConfigError
        from .reanchor import expression_map, identity_map

        ident, expr = self.terms.get("identity_anchor"), self.terms.get("expression_anchor")
        if ident is None or expr is None or not (ident.on and expr.on):
            raise ConfigError("--reanchor re-expresses the identity and expression anchors' codes; this recipe needs "
                              "identity_anchor and expression_anchor on (weight > 0)")  # fmt: skip
        root = Path(str(state["config"]["data"])).expanduser()
        try:
            old = FaceDataset(root, split="train")
        except (OSError, FaceModelError) as exc:
            raise CheckpointError(f"--reanchor needs the dataset checkpoint {str(path)!r} was trained on, at {str(root)!r} "
                                  f"(its config's `data`): {exc}; rebuild it there with the same build command") from exc  # fmt: skip
        if old.manifest.checksum != state["dataset_checksum"]:
            raise CheckpointError(f"the dataset at {str(root)!r} is not the one checkpoint {str(path)!r} was trained on "
                                  "(checksum differs); rebuild it with the run's build command")  # fmt: skip
        name_id = self.config.require_role("identity", "--reanchor")
        name_exp = self.config.require_role("expression", "--reanchor")
        old_anchor, _ = fit_expression_anchor(old, self.gen_config.factor(name_exp).code_dim, seed=int(state["config"].get("seed", 0)))
        return {name_id: identity_map(old, self.data, self.gen_config.factor(name_id).code_dim),
                name_exp: expression_map(old_anchor, expr.fit.anchor)}

    def export(self, directory: str | os.PathLike | None = None, *, ema: bool = True) -> Path:
        """Save the (EMA) generator as a :class:`FaceModel` folder (config.json + safetensors)."""
        directory = Path(directory) if directory is not None else self.out / "model"
        config = FaceModelConfig(
            generator=self.gen_config,
            label_names=self.label_names,
            template_name=self.template.name,
            training={
                "step": self.step,
                "epoch": round(self.sampler.epoch_float, 3),
                "ema": ema,
                "dataset_checksum": self.data.manifest.checksum,
                "config": self.config.model_dump(mode="json"),
            },
        )
        model = FaceModel(
            config,
            template=self.template.vertices,
            faces=self.template.faces,
            uv=self.uv,
            landmarks=self.template.landmarks,
            label_codes={f.name: self.codes.codes(f.name).cpu() for f in self.gen_config.factors},
        )
        model.generator.load_state_dict((self.G_ema if ema else self.G).state_dict())
        return model.save_pretrained(directory)

    # ---- the loop -----------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            append_record(self.out / "metrics.jsonl", record)

    def train(self, *, max_steps: int | None = None, time_limit_s: float | None = None) -> int:
        """Run until ``total_steps`` (or ``max_steps`` more steps, or the time limit).

        Checkpoints every ``checkpoint_every`` steps and when stopping, including on Ctrl-C
        and on SIGTERM (the step in progress finishes first).

        Returns:
            the step reached.
        """
        c = self.config
        if self._resumed:
            if self.is_main:  # drop lines a killed run wrote after the checkpoint
                truncate_records(self.out / "metrics.jsonl", self.step)
            self._resumed = False
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        t0 = time.perf_counter()
        stop_requested = []
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (kill, cluster pre-emption): finish the current step, checkpoint, return
            previous = signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
        bar = tqdm(total=stop, initial=self.step, disable=not (self.progress and self.is_main), unit="step", dynamic_ncols=True)
        try:
            window: dict[str, list[float]] = {}
            while self.step < stop:
                for k, v in self.train_step().items():
                    window.setdefault(k, []).append(v)
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == stop:
                    # means over the steps since the last line: steps alternate between the
                    # factors (§4.3), so a single step would show only one kind
                    logs = {k: float(np.mean(v)) for k, v in window.items()}
                    window = {}
                    bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("wdist", "gp", "g_cls", "g_feat", "g_reg")})
                    self._log({"step": self.step, "epoch": round(self.sampler.epoch_float, 4),
                               "seconds": round(time.perf_counter() - t0, 2), **logs})  # fmt: skip
                if self.is_main and c.eval_every and self.step % c.eval_every == 0:
                    self._log({"step": self.step, "eval": self.evaluate()})
                if self.is_main and c.sample_every and self.step % c.sample_every == 0:
                    self.render_samples(self.out / "samples" / f"step{self.step:07d}.png")
                if self.is_main and c.snapshot_every and self.step % c.snapshot_every == 0:
                    # EMA exports for picking the release by validation metrics (training.select)
                    (self.out / "snapshots").mkdir(exist_ok=True)
                    with atomic_dir(self.out / "snapshots" / f"step{self.step:07d}", overwrite=True) as tmp:
                        self.export(tmp)
                if self.step % c.checkpoint_every == 0:
                    self.save()
                if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
                    break
                if stop_requested:
                    log.warning("SIGTERM at step %d: checkpointing and stopping", self.step)
                    break
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving a checkpoint", self.step)
            self.save()
            raise
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        self.save()
        return self.step
