"""Seconds per generator step (with its critic steps) at the paper's sizes, and the projected
time of the paper schedule.

    python benchmarks/train_step.py --data ~/.cache/facemodel/ict4d [--steps 20] [--device cpu|cuda] [--threads N]

Two figures: ``Trainer.train_step`` (our code: data loading, alternation, all loss terms,
EMA) and a bare loop over the same networks and loss terms with all inputs already in
memory (random real batches, no data loading, no EMA, no bookkeeping). Their ratio is the
overhead of our own code (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time

import torch

from facemodel.training import Trainer, load_config
from facemodel.training.losses import classification_loss, feature_loss, gradient_penalty, laplacian_loss


def bare_step(t: Trainer, real: torch.Tensor, labels: dict) -> None:
    c = t.config
    G, D = t.G, t.D
    for _ in range(c.critic_steps):
        z = torch.randn(c.batch_size, t.gen_config.code_dim, device=t.device)
        with torch.no_grad():
            fake = G(z)
        ir, if_ = D.image(real), D.image(fake)
        o_r = D.from_image(ir + c.instance_noise * torch.randn_like(ir))
        o_f = D.from_image(if_ + c.instance_noise * torch.randn_like(if_))
        gp = gradient_penalty(lambda x: D.from_image(x).score, ir, if_)
        cls = sum(classification_loss(o_r.logits[k], labels[k]) for k in labels)
        loss = o_f.score.mean() - o_r.score.mean() + c.adversarial.gradient_penalty * gp + c.classification.critic_weight * cls
        t.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        t.opt_D.step()
    z = torch.randn(c.batch_size, t.gen_config.code_dim, device=t.device)
    d = G(z)
    img = D.image(d)
    o = D.from_image(img + c.instance_noise * torch.randn_like(img))
    lab = torch.randint(7, (c.batch_size,), device=t.device)
    f = o.features["identity"]
    loss = (-o.score.mean() + classification_loss(o.logits["expression"], lab)
            + c.feature.weight * feature_loss(f[0::2], f[1::2])
            + c.laplacian.weight * laplacian_loss(t.terms["laplacian"].laplacian, d, scale=c.displacement_scale_mm))  # fmt: skip
    t.opt_G.zero_grad(set_to_none=True)
    loss.backward()
    t.opt_G.step()


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--config", default="configs/paper.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    over = [f"data={json.dumps(a.data)}", f"device={json.dumps(a.device)}", "eval_every=0", "sample_every=0"] + a.overrides
    if a.threads:
        over.append(f"threads={a.threads}")
    cfg = load_config(a.config, over)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, tmp, progress=False)
        ours = timed(t.train_step, a.steps, t.device)
        real, labels, _ = t._real_batch()  # (vertices, labels, rows)
        bare = timed(lambda: bare_step(t, real, labels), a.steps, t.device)
    steps_per_epoch = len(t.data) / (cfg.batch_size * cfg.critic_steps)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    dev = torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; torch {torch.__version__}; batch {cfg.batch_size}, {cfg.critic_steps} critic steps, V={t.template.num_vertices}")
    print(f"train_step (ours): {ours:.3f} s/step; bare networks: {bare:.3f} s/step; ratio {ours / bare:.2f}")
    print(f"paper schedule: {cfg.epochs:g} epochs x {steps_per_epoch:.1f} steps = {total} steps -> {total * ours / 3600:.2f} h")


if __name__ == "__main__":
    main()
