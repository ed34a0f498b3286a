"""The training loop: WGAN-GP with auxiliary classifiers, feature loss and Laplacian
regulariser (paper §4.3, §5.1), resumable, on CPU or CUDA, optionally under torchrun."""

from __future__ import annotations

import contextlib
import copy
import json
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
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._fs import atomic_dir, atomic_file
from ..data.dataset import FaceDataset
from ..evaluation.metrics import diversity, specificity
from ..model import FaceModel, FaceModelConfig
from ..networks.config import Factor, GeneratorConfig
from ..networks.generator import Generator
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .codes import CodeBatch, LabelCodes, sample_codes
from .config import ConfigError, TrainConfig
from .discriminator import Critic
from .labels import factor_labels, factor_targets
from .pairs import PairSampler, pair_images
from .expression_meter import BlendshapeMeter, fit_blendshape_meter, fit_identity_meter, same_identity_spread
from .subspace import MotionSubspace, fit_motion_subspace
from .anchoring import FACE_VERTICES, ExpressionAnchor, anchor_loss, fit_expression_anchor, fit_identity_anchor, random_weights
from .rigidity import between_identity_shape, expression_motion_mm, rigidity_loss, rigidity_weights, same_identity_motion
from .losses import class_weights, classification_loss, feature_loss, gradient_penalty, laplacian_loss
from .sampler import EpochSampler
from .transfer import transfer_codes, transfer_consistency, transfer_triangles

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
        # ---- distributed (torchrun) ---------------------------------------------------
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = _device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        if self.world > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        if config.batch_size % (2 * self.world):
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of 2 x world size {self.world}")
        self.batch = config.batch_size // self.world  # per rank: the global batch stays config.batch_size
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        np.random.seed(config.seed)
        # ---- data ---------------------------------------------------------------------
        self.data = FaceDataset(config.data, split="train")
        self.template = self.data.template
        self.template_t = torch.from_numpy(self.template.vertices).to(self.device)
        self._offsets_t: torch.Tensor | None = None
        if config.data_on_device:
            self._offsets_t = torch.from_numpy(self.data.offsets()).to(self.device)
        labels, names = {}, {}
        for spec in config.factors:
            labels[spec.name], names[spec.name] = factor_labels(self.data, spec.labels, clusters=spec.clusters, seed=config.seed)
        self.label_names = names
        self.real_labels = {k: torch.from_numpy(v) for k, v in labels.items()}
        self.real_targets: dict[str, torch.Tensor] = {}
        if config.lambda_regress > 0:
            for s in config.factors:  # standardised per column, so every target weighs alike
                t = factor_targets(self.data, s.labels)
                self.real_targets[s.name] = torch.from_numpy((t - t.mean(0)) / (t.std(0) + 1e-6))
        self.gen_config = GeneratorConfig(
            num_vertices=self.template.num_vertices,
            factors=tuple(Factor(name=s.name, code_dim=s.code_dim, num_labels=len(names[s.name])) for s in config.factors),
            noise_dim=config.noise_dim,
            hidden=config.hidden,
            displacement_scale_mm=config.displacement_scale_mm,
            factor_hidden=tuple(config.factor_hidden) if config.factor_hidden is not None else None,
        )
        self.classified = tuple(s.name for s in config.factors) if config.classify == "all" else ("identity",)
        self.weights = {k: class_weights(self.real_labels[k], len(names[k])).to(self.device) for k in self.classified}
        self.laplacian = self.template.laplacian().to(self.device)
        self.meter: BlendshapeMeter | None = None
        self.spread_target = 0.0
        if config.lambda_blendshape_consistency > 0 or config.lambda_expression_spread > 0:
            self.meter, mae = fit_blendshape_meter(self.data, components=config.meter_components, seed=config.seed)
            self.meter = self.meter.to(self.device)
            self.spread_target = same_identity_spread(self.data, self.meter, seed=config.seed)
            log.info("blendshape meter: validation MAE %.4f; same-identity spread %.4f", mae, self.spread_target)
        self.identity_meter: BlendshapeMeter | None = None
        if config.lambda_identity_consistency > 0:
            self.identity_meter, mae = fit_identity_meter(self.data, seed=config.seed)
            self.identity_meter = self.identity_meter.to(self.device)
            log.info("identity meter: validation MAE %.4f (coefficients of unit variance)", mae)
        self.subspace: MotionSubspace | None = None
        if config.lambda_motion_subspace > 0:
            self.subspace, stats = fit_motion_subspace(self.data, components=config.motion_subspace_components, seed=config.seed)
            self.subspace = self.subspace.to(self.device)
            log.info("motion subspace: %d modes; data pairs move %.3f mm, %.4f mm of it outside (RMS per vertex)",
                     config.motion_subspace_components, stats["motion_mm"], stats["residual_mm"])  # fmt: skip
        self.anchor: ExpressionAnchor | None = None
        if config.lambda_expression_anchor > 0 or config.lambda_identity_anchor > 0 or config.lambda_expression_extrapolation > 0:
            if len(self.gen_config.factors) < 2:
                raise ConfigError("anchoring (lambda_expression_anchor, lambda_identity_anchor, "
                                  "lambda_expression_extrapolation) needs an expression factor (the second of "
                                  "`factors`); set them to 0")  # fmt: skip
            exp = self.gen_config.factors[1]
            self.anchor, stats = fit_expression_anchor(self.data, exp.code_dim, seed=config.seed)
            self.anchor = self.anchor.to(self.device)
            self._anchor_slice = self.gen_config.code_slices()[exp.name]
            classes = self.data.identity_classes()
            self._anchor_rows = {int(k): np.flatnonzero(classes == k) for k in np.unique(classes)}
            self._anchor_classes = classes
            self._anchor_weights = torch.from_numpy(np.asarray(self.data.meta("blendshapes"), dtype=np.float32))
            log.info("expression anchor: %d codes hold %.1f%% of the weights' displacement (%.3f mm RMS); the linear "
                     "model misses same-person pairs by %.3f mm", exp.code_dim, 100 * stats["kept"], stats["motion_mm"],
                     stats["fit_residual_mm"])  # fmt: skip
        self._identity_codes: torch.Tensor | None = None
        if config.lambda_identity_anchor > 0:
            ident = self.gen_config.factors[0]
            id_classes, id_codes, stats = fit_identity_anchor(self.data, ident.code_dim)
            lookup = np.full(int(id_classes.max()) + 1, -1, dtype=np.int64)
            lookup[id_classes] = np.arange(len(id_classes))
            self._identity_codes = torch.from_numpy(id_codes[lookup[self._anchor_classes]]).to(self.device)  # per mesh
            self._identity_slice = self.gen_config.code_slices()[ident.name]
            log.info("identity anchor: %d identities, %d codes hold %.1f%% of their shape variance (%.3f mm RMS)",
                     int(stats["identities"]), ident.code_dim, 100 * stats["kept"], stats["shape_mm"])  # fmt: skip
        self.rigidity: torch.Tensor | None = None
        self.mobility: torch.Tensor | None = None
        self.motion_target = 0.0
        self.identity_target = 0.0
        if config.lambda_rigidity > 0 or config.lambda_motion_spread > 0 or config.lambda_identity_spread > 0:
            motion = expression_motion_mm(self.data, seed=config.seed)
            w = rigidity_weights(motion, config.rigidity_scale_mm)
            self.rigidity = torch.from_numpy(w).to(self.device)
            self.mobility = 1.0 - self.rigidity  # where the data's expressions move the face
            if config.lambda_motion_spread > 0:
                self.motion_target = same_identity_motion(self.data, w, scale=config.displacement_scale_mm, seed=config.seed)
            if config.lambda_identity_spread > 0:
                self.identity_target = between_identity_shape(self.data, w, scale=config.displacement_scale_mm,
                                                              seed=config.seed)  # fmt: skip
        self.pairs: PairSampler | None = None
        if config.lambda_pair > 0:
            self.pairs = PairSampler(self.data, tuple(f.name for f in self.gen_config.factors), seed=config.seed)
        self.transfer_faces: torch.Tensor | None = None
        if config.lambda_transfer > 0:
            if len(config.factors) < 2:
                raise ConfigError("lambda_transfer needs an identity and an expression factor (two factors in `factors`)")
            keep = transfer_triangles(self.template.vertices, self.template.faces)
            self.transfer_faces = torch.from_numpy(np.asarray(self.template.faces, np.int64)[keep]).to(self.device)
        # ---- models -------------------------------------------------------------------
        self.G = Generator(self.gen_config).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.uv = self._uv_map(config)
        self.D = Critic(
            self.uv,
            self.template.faces,
            {f.name: f.num_labels for f in self.gen_config.factors},
            resolution=config.resolution,
            displacement_scale_mm=config.displacement_scale_mm,
            targets={k: int(v.shape[1]) for k, v in self.real_targets.items()} or None,
            pairs=tuple(self.pairs.kinds) if self.pairs is not None else (),
        ).to(self.device)
        self.codes = LabelCodes(self.gen_config, seed=config.seed).to(self.device)
        if self.world > 1:  # identical start everywhere; then per-rank noise for codes and instance noise
            for module in (self.G, self.G_ema, self.D):
                for t in list(module.parameters()) + [b for b in module.buffers() if not b.is_sparse and b.layout == torch.strided]:
                    dist.broadcast(t.data, src=0)
            torch.manual_seed(config.seed + 1000 * self.rank)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=tuple(config.betas))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=tuple(config.betas))
        self._G_fwd = torch.compile(self.G) if config.compile else self.G
        self._D_img = torch.compile(self.D.from_image) if config.compile else self.D.from_image
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
        self._eval_reference: dict[str, torch.Tensor | None] | None = None
        # fixed codes for sample renders: their own generator, so resuming does not shift the run's RNG
        g = torch.Generator().manual_seed(config.seed + 1)
        self._fixed_z = torch.randn(16, self.gen_config.code_dim, generator=g).to(self.device)

    # ---- helpers ------------------------------------------------------------------------
    def _uv_map(self, config: TrainConfig) -> np.ndarray:
        """(V, 2) UV coordinates of the critic's geometry image (see ``TrainConfig.uv_stiffness``)."""
        if config.uv_stiffness == 1.0:
            return self.template.uv
        from ..geometry.uv import harmonic_uv

        V = self.template.num_vertices
        if config.uv_face_vertices >= V:
            raise ConfigError(
                f"uv_face_vertices={config.uv_face_vertices} but the template has {V} vertices; "
                "set it below the vertex count (or uv_stiffness=1 for the plain harmonic map)"
            )
        stiff = np.arange(config.uv_face_vertices, V)
        return harmonic_uv(self.template.vertices, self.template.faces, stiff_vertices=stiff, stiffness=config.uv_stiffness).uv

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

    def _real_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray]:
        rows = self.sampler.next()
        labels = {k: self.real_labels[k][rows].to(self.device) for k in self.classified}
        targets = {k: t[rows].to(self.device) for k, t in self.real_targets.items()}
        return self._displacements(rows), labels, targets, rows

    def _shared_factor(self, batch: CodeBatch) -> str | None:
        """The factor whose code the batch's pairs share (the pair critics' factor), or None."""
        shared = [f.name for f in self.gen_config.factors if f.name != batch.labelled]
        return shared[0] if len(shared) == 1 and self.pairs is not None and shared[0] in self.pairs.kinds else None

    def _pair_critic_loss(self, batch: CodeBatch, fake: torch.Tensor, real: torch.Tensor, rows: np.ndarray):
        """Wasserstein distance and gradient penalty of the pair critic of the factor the
        generated pairs share: real pairs (the first P real meshes and their partners) against
        the generated pairs."""
        factor = self._shared_factor(batch)
        if factor is None:
            return None, None, None
        P = batch.pairs.shape[0]
        partner = self.pairs.partners(rows[:P], factor)
        other = self._displacements(partner)
        real_img = torch.cat([self.D.image(real[:P]), self.D.image(other)], 1)
        fake_img = pair_images(self.D.image(fake), batch.pairs)
        w = self.D.pair_score(factor, real_img).mean() - self.D.pair_score(factor, fake_img).mean()
        gp = gradient_penalty(lambda x: self.D.pair_score(factor, x), real_img, fake_img)
        return factor, w, gp

    def _codes(self) -> CodeBatch:
        return sample_codes(self.step, self.batch, self.gen_config, self.codes, classified=self.classified,
                            prior_pairs=self.config.prior_pairs, device=self.device)  # fmt: skip

    def _critic(self, d: torch.Tensor, noise: float):
        img = self.D.image(d.float())  # the mapping layer runs in float32
        if noise > 0:
            img = img + noise * torch.randn_like(img)
        with self._autocast():
            return self._D_img(img)

    def _sync_grads(self, module: torch.nn.Module) -> None:
        if self.world > 1:  # average gradients by hand: works with the penalty's double backward
            for p in module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    # ---- steps --------------------------------------------------------------------------
    def critic_step(self) -> dict[str, float]:
        c = self.config
        real, labels, targets, rows = self._real_batch()
        cb = self._codes()
        with torch.no_grad(), self._autocast():
            fake = self._G_fwd(cb.z).float()
        out_r = self._critic(real, c.instance_noise)
        out_f = self._critic(fake, c.instance_noise)
        wdist = out_r.score.float().mean() - out_f.score.float().mean()
        gp = gradient_penalty(lambda x: self.D.from_image(x).score, self.D.image(real), self.D.image(fake))
        cls = sum(classification_loss(out_r.logits[k].float(), labels[k], self.weights[k]) for k in self.classified)
        loss = -wdist + c.gp_weight * gp + c.lambda_c * cls
        logs = {}
        if targets:
            reg = sum(F.mse_loss(out_r.regression[k].float(), t) for k, t in targets.items())
            loss = loss + c.lambda_regress * reg
            logs["d_regress"] = float(reg.detach())
        if self.pairs is not None:
            factor, pw, pgp = self._pair_critic_loss(cb, fake, real, rows)
            if factor is not None:  # logged per factor: the steps alternate between them
                loss = loss + c.lambda_pair * (-pw + c.gp_weight * pgp)
                logs.update({f"pair_wdist_{factor}": float(pw.detach()), f"pair_gp_{factor}": float(pgp.detach())})
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads(self.D)
        self.opt_D.step()
        return {"d_loss": loss.item(), "wdist": wdist.item(), "gp": gp.item(), "d_cls": float(cls.detach()), **logs}

    def generator_step(self) -> dict[str, float]:
        c = self.config
        batch = self._codes()
        with self._autocast():
            d = self._G_fwd(batch.z).float()
        out = self._critic(d, c.instance_noise)
        gan = -out.score.float().mean()
        cls = (classification_loss(out.logits[batch.labelled].float(), batch.labels[batch.labelled])
               if batch.labelled else d.sum() * 0)  # fmt: skip
        a, b = batch.pairs[:, 0], batch.pairs[:, 1]  # pairs share every factor's code but the labelled one
        feat = d.sum() * 0
        if c.use_feature_loss:
            for f in self.gen_config.factors:
                if f.name != batch.labelled:
                    feat = feat + feature_loss(out.features[f.name][a].float(), out.features[f.name][b].float())
        cons = rigid = mspread = bcons = spread = pair = d.sum() * 0
        factor = self._shared_factor(batch)
        if factor is not None:
            pair = -self.D.pair_score(factor, pair_images(self.D.image(d), batch.pairs)).mean()
        if c.lambda_consistency > 0 and out.regression:
            for f in self.gen_config.factors:
                if f.name != batch.labelled and f.name in out.regression:
                    r = out.regression[f.name].float()
                    cons = cons + (r[a] - r[b]).square().mean()
        if self.rigidity is not None and batch.labelled != self.gen_config.factors[0].name:  # pairs share the identity code
            rigid = rigidity_loss(d[a], d[b], self.rigidity, scale=c.displacement_scale_mm)
            if c.lambda_motion_spread > 0:
                moved = rigidity_loss(d[a], d[b], self.mobility, scale=c.displacement_scale_mm)
                mspread = torch.relu(self.motion_target - moved)
        ispread = d.sum() * 0
        if c.lambda_identity_spread > 0 and batch.labelled == self.gen_config.factors[0].name:  # pairs share the expression code
            shaped = rigidity_loss(d[a], d[b], self.rigidity, scale=c.displacement_scale_mm)
            ispread = torch.relu(self.identity_target - shaped)
        if self.meter is not None:
            read = self.meter(d + self.template_t)
            gap = (read[a] - read[b]).square().sum(1)
            expression = self.gen_config.factors[1].name if len(self.gen_config.factors) > 1 else None
            if batch.labelled != expression:  # these pairs share the expression code
                bcons = gap.mean()
            else:  # these pairs share the identity code, not the expression code
                spread = torch.relu(self.spread_target - gap.mean())
        icons = msub = d.sum() * 0
        if batch.labelled != self.gen_config.factors[0].name:  # pairs share the identity code
            if self.subspace is not None:
                msub = self.subspace.residual(d[a], d[b]).mean()
            if self.identity_meter is not None:
                read = self.identity_meter(d + self.template_t)
                icons = (read[a] - read[b]).square().sum(1).mean()
        anchor = ianchor = d.sum() * 0
        if c.lambda_expression_anchor > 0:
            anchor = self._anchor_loss()
        if self._identity_codes is not None:
            ianchor = self._identity_anchor_loss()
        extra = d.sum() * 0
        if c.lambda_expression_extrapolation > 0:
            extra = self._extrapolation_loss()
        transfer = tmag = d.sum() * 0
        if self.transfer_faces is not None:
            transfer, tmag = self._transfer_loss()
        reg = laplacian_loss(self.laplacian, d, scale=c.displacement_scale_mm) if c.use_reg else d.sum() * 0
        loss = (c.lambda_gan * gan + c.lambda_cls * cls + c.lambda_feat * feat + c.lambda_reg * reg
                + c.lambda_consistency * cons + c.lambda_rigidity * rigid + c.lambda_motion_spread * mspread
                + c.lambda_blendshape_consistency * bcons + c.lambda_expression_spread * spread
                + c.lambda_identity_consistency * icons + c.lambda_motion_subspace * msub
                + c.lambda_pair * pair + c.lambda_transfer * transfer + c.lambda_identity_spread * ispread
                + c.lambda_expression_anchor * anchor + c.lambda_identity_anchor * ianchor
                + c.lambda_expression_extrapolation * extra)
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads(self.G)
        self.opt_G.step()
        self._update_ema()
        return {"g_loss": loss.item(), "g_gan": gan.item(), "g_cls": float(cls.detach()), "g_feat": float(feat.detach()), "g_reg": float(reg.detach()),
                **({"g_cons": float(cons.detach())} if c.lambda_consistency > 0 else {}),
                **({"g_rigid": float(rigid.detach()), "g_mspread": float(mspread.detach())} if self.rigidity is not None else {}),
                **({"g_bcons": float(bcons.detach()), "g_spread": float(spread.detach())} if self.meter is not None else {}),
                **({"g_icons": float(icons.detach())} if self.identity_meter is not None else {}),
                **({"g_msub": float(msub.detach())} if self.subspace is not None else {}),
                **({"g_anchor": float(anchor.detach())} if c.lambda_expression_anchor > 0 else {}),
                **({"g_ianchor": float(ianchor.detach())} if self._identity_codes is not None else {}),
                **({"g_extra": float(extra.detach())} if c.lambda_expression_extrapolation > 0 else {}),
                **({f"g_pair_{factor}": float(pair.detach())} if factor is not None else {}),
                **({"g_transfer": float(transfer.detach()), "transfer_motion": float(tmag)} if self.transfer_faces is not None else {}),
                **({"g_ispread": float(ispread.detach())} if c.lambda_identity_spread > 0 else {})}

    def _step_rng(self, tag: int) -> np.random.Generator:
        """numpy generator of this step and term (``tag``), different on every rank of a multi-GPU
        run (each rank draws its own anchor rows; rank 0 keeps the single-process stream)."""
        key = [self.config.seed, self.step, tag] + ([self.rank] if self.rank else [])
        return np.random.default_rng(key)

    def _anchor_loss(self) -> torch.Tensor:
        """Expression anchoring (see :mod:`facemodel.training.anchoring`): ``anchor_pairs``
        same-person training pairs (seeded by the step), their weights' anchor codes on random
        prior identity and noise codes; mm^2 per face-area vertex."""
        P = self.config.anchor_pairs
        rng = self._step_rng(11)
        a = rng.integers(0, len(self.data), P)
        b = np.array([rng.choice(self._anchor_rows[int(self._anchor_classes[r])]) for r in a], dtype=np.int64)
        rows = np.concatenate([a, b])
        x = torch.from_numpy(self.data.offsets(rows)[:, :FACE_VERTICES].astype(np.float32)).to(self.device)
        z = torch.randn(P, self.gen_config.code_dim, device=self.device).repeat(2, 1)
        z[:, self._anchor_slice] = self.anchor(self._anchor_weights[rows].to(self.device))
        with self._autocast():
            g = self._G_fwd(z).float()[:, :FACE_VERTICES]
        return anchor_loss(g[:P] - g[P:], x[:P] - x[P:])

    def _identity_anchor_loss(self) -> torch.Tensor:
        """Identity anchoring (see :mod:`facemodel.training.anchoring`): ``anchor_pairs`` training
        meshes (seeded by the step) reproduced from their identity's anchor code, their weights'
        expression anchor code and random noise; mm^2 per vertex."""
        rng = self._step_rng(13)
        rows = rng.integers(0, len(self.data), self.config.anchor_pairs)
        x = torch.from_numpy(self.data.offsets(rows).astype(np.float32)).to(self.device)
        z = torch.randn(len(rows), self.gen_config.code_dim, device=self.device)
        z[:, self._identity_slice] = self._identity_codes[torch.from_numpy(rows).to(self.device)]
        z[:, self._anchor_slice] = self.anchor(self._anchor_weights[rows].to(self.device))
        with self._autocast():
            g = self._G_fwd(z).float()
        return anchor_loss(g, x)

    def _extrapolation_loss(self) -> torch.Tensor:
        """Extrapolation anchoring (see :mod:`facemodel.training.anchoring`): ``anchor_pairs`` pairs
        of sparse random weight vectors (seeded by the step) on random prior identity and noise
        codes, against the anchor's linear displacement model; mm^2 per vertex of its subset."""
        P, K = self.config.anchor_pairs, self._anchor_weights.shape[1]
        u = torch.from_numpy(random_weights(2 * P, K, self._step_rng(17)))
        u = u.to(self.device)
        z = torch.randn(P, self.gen_config.code_dim, device=self.device).repeat(2, 1)
        z[:, self._anchor_slice] = self.anchor(u)
        vid = self.anchor.vertex_ids
        with self._autocast():
            g = self._G_fwd(z).float()[:, vid]
        target = torch.einsum("pk,krc->prc", u[:P] - u[P:], self.anchor.displacement)
        return anchor_loss(g[:P] - g[P:], target)

    def _transfer_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Transfer consistency (facemodel.training.transfer) on a fresh grid of prior codes."""
        c = self.config
        ident, expr = self.gen_config.factors[0].name, self.gen_config.factors[1].name
        I, E = c.transfer_identities, c.transfer_expressions
        z = transfer_codes(self.gen_config.code_slices(), self.gen_config.code_dim, I, E, identity=ident,
                           expression=expr, device=self.device)  # fmt: skip
        with self._autocast():
            d = self._G_fwd(z).float()
        meshes = (d + self.template_t).view(I, E + 1, -1, 3)
        faces = self.transfer_faces
        if 0 < c.transfer_triangles < len(faces):
            faces = faces[torch.randperm(len(faces), device=self.device)[: c.transfer_triangles]]
        return transfer_consistency(meshes, faces, space=c.transfer_space, delta=c.transfer_delta,
                                    relative=c.transfer_relative)

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
    def _reference(self, split: str, n: int) -> torch.Tensor | None:
        """Up to ``n`` meshes (mm, CPU) of a split, a fixed random subset."""
        ds = self.data if split == "train" else FaceDataset(self.config.data, split=split)
        if len(ds) == 0:
            return None
        rows = np.sort(np.random.default_rng(self.config.seed).choice(len(ds), size=min(len(ds), n), replace=False))
        return torch.from_numpy(ds.vertices(rows))

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Specificity and diversity (mm) of the raw and EMA generators.

        ``specificity_mm`` is measured against training meshes, ``val_specificity_mm``
        against the validation split (identities never trained on): the convergence
        curve to watch. ``data`` gives the same figures for the training meshes.
        """
        n = self.config.eval_samples
        if self._eval_reference is None:
            self._eval_reference = {"train": self._reference("train", 2000), "val": self._reference("val", 1000)}
        ref, val = self._eval_reference["train"], self._eval_reference["val"]
        tpl = self.template_t.cpu()
        g = torch.Generator().manual_seed(1234)
        result: dict[str, Any] = {"data": {"diversity_mm": diversity(ref, 4000, generator=g),
                                           "offset_mm": float((ref - tpl).norm(dim=-1).mean())}}  # fmt: skip
        if val is not None:
            result["data"]["val_specificity_mm"] = float(specificity(val[:n], ref).mean())
        for name, G in (("raw", self.G), ("ema", self.G_ema)):
            z = torch.randn(n, self.gen_config.code_dim, generator=g).to(self.device)
            v = (G(z).float() + self.template_t).cpu()
            result[name] = {
                "offset_mm": float((v - tpl).norm(dim=-1).mean()),  # distance from the template
                "specificity_mm": float(specificity(v, ref).mean()),
                "diversity_mm": diversity(v, 4000, generator=g),
            }
            if val is not None:
                result[name]["val_specificity_mm"] = float(specificity(v, val).mean())
        return result

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
            **({"pairs": self.pairs.state_dict()} if self.pairs is not None else {}),
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
        if self.pairs is not None and "pairs" in state:
            self.pairs.load_state_dict(state["pairs"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._resumed = True  # train() drops log lines written after this checkpoint

    def warm_start(self, path: str | os.PathLike) -> list[str]:
        """Start from another run's checkpoint with *this* run's recipe (a changed loss, say).

        Loads the generators, critic, label codes, generator optimiser, data order and step;
        critic heads this recipe adds (the regressors) start fresh, and so does the critic's
        optimiser when the critic's parameters changed. The dataset must be the same.

        Returns:
            the critic parameters that were not in the checkpoint (newly initialised).

        Raises:
            CheckpointError: unreadable checkpoint, another dataset, or a generator of another shape.
        """
        state = load_checkpoint(Path(path))
        if state["dataset_checksum"] != self.data.manifest.checksum:
            raise CheckpointError(f"checkpoint {str(path)!r} was trained on another dataset (checksum differs)")
        try:
            self.G.load_state_dict(state["G"])
            self.G_ema.load_state_dict(state["G_ema"])
            self.opt_G.load_state_dict(state["opt_G"])
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} has a generator of another shape: {exc}") from exc
        # label codes and critic entries of another shape (a factor with more labels) start fresh
        own_codes = self.codes.state_dict()
        self.codes.load_state_dict({k: v if v.shape == own_codes[k].shape else own_codes[k] for k, v in state["codes"].items()})
        own = self.D.state_dict()
        resized = [k for k, v in state["D"].items() if k in own and v.shape != own[k].shape]
        result = self.D.load_state_dict({k: v for k, v in state["D"].items() if k not in resized}, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"checkpoint {str(path)!r} has critic parameters this recipe lacks: "
                                  f"{result.unexpected_keys[:4]}; use the same factors and resolution")  # fmt: skip
        if not result.missing_keys:
            self.opt_D.load_state_dict(state["opt_D"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        return list(result.missing_keys)  # includes the resized entries

    def _truncate_log(self) -> None:
        """Drop metric lines written after the checkpoint (by a run that was then killed)."""
        path = self.out / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        lines = path.read_text().splitlines()
        keep = [line for line in lines if json.loads(line).get("step", 0) <= self.step]
        if len(keep) != len(lines):
            with atomic_file(path, "w") as f:
                f.write("".join(line + "\n" for line in keep))

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
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def train(self, *, max_steps: int | None = None, time_limit_s: float | None = None) -> int:
        """Run until ``total_steps`` (or ``max_steps`` more steps, or the time limit).

        Checkpoints every ``checkpoint_every`` steps and when stopping, including on Ctrl-C
        and on SIGTERM (the step in progress finishes first).

        Returns:
            the step reached.
        """
        c = self.config
        if self._resumed:
            self._truncate_log()
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
