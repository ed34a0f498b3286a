"""Animate a face from ARKit / Live Link Face blendshape weights, and read weights back.

    python examples/animate_from_arkit.py [--model DIR|REPO] [--weights FILE.csv] [--identity SEED] [--out animate-output]

Without ``--weights`` the example first writes a small Live Link Face CSV of its own
(``take.csv``: 2.5 s at 30 fps: a blink, the jaw opening, a smile, the brows going up, a
glance to the side with the jaw sliding left), the kind of file the Live Link Face app
exports. It then

1. reads the CSV (header names; ``Timecode`` and ``BlendShapeCount`` are ignored),
2. drives one identity with it through the model's blendshape map (``take.glb``: the frames
   as animated morph targets; ``frames/``: an OBJ sequence),
3. renders a strip of frames (``strip.png``),
4. reads the weights back from the generated faces (``blendshapes_from_expression``) and
   prints how close they are to the input (the shapes the model applies as fixed linear
   deltas, ``model.fallback_blendshapes`` such as the gaze and ``jawLeft``, are not in the
   codes and are left out of that figure).

The same as one command: ``facemodel animate --identity 7 --weights take.csv --out take.glb``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facemodel.blendshapes import ICT_NAMES, read_weights, to_ict_weights, write_weights_csv
from facemodel.cli import save_animation_glb
from facemodel.geometry.render import render_grid, save_png
from facemodel.model import FaceModel


def make_take(path: Path, fps: float = 30.0, seconds: float = 2.5) -> Path:
    """A short Live Link Face-style take: blink, jaw open, smile, brows up, a glance with the
    jaw sliding left (smooth bumps)."""
    t = np.arange(int(fps * seconds)) / fps

    def bump(center: float, width: float, peak: float = 1.0) -> np.ndarray:
        return peak * np.exp(-0.5 * ((t - center) / width) ** 2)

    arkit = {
        "eyeBlinkLeft": bump(0.3, 0.06), "eyeBlinkRight": bump(0.3, 0.06),
        "jawOpen": bump(0.8, 0.18, 0.8), "mouthFunnel": bump(0.8, 0.15, 0.3),
        "mouthSmileLeft": bump(1.3, 0.2, 0.9), "mouthSmileRight": bump(1.3, 0.2, 0.9),
        "cheekSquintLeft": bump(1.3, 0.2, 0.4), "cheekSquintRight": bump(1.3, 0.2, 0.4),
        "browInnerUp": bump(1.7, 0.15, 0.9), "browOuterUpLeft": bump(1.7, 0.15, 0.7),
        "browOuterUpRight": bump(1.7, 0.15, 0.7),
        "eyeLookOutLeft": bump(2.2, 0.15, 0.8), "eyeLookInRight": bump(2.2, 0.15, 0.8),
        "jawLeft": bump(2.2, 0.15, 0.7),
    }  # fmt: skip
    return write_weights_csv(path, {k: v.astype(np.float32) for k, v in arkit.items()}, spelling="livelink", fps=fps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model with a blendshape map (default: the released weights)")
    p.add_argument("--weights", default=None, help="Live Link Face / ARKit / ICT CSV or JSON (default: write a demo take)")
    p.add_argument("--identity", type=int, default=7, help="seed of the face to animate")
    p.add_argument("--out", default="animate-output")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = FaceModel.from_pretrained(a.model)

    csv_path = Path(a.weights) if a.weights else make_take(out / "take.csv")
    take = read_weights(csv_path, as_dict=True)  # {ICT name: (frames,)}, checked
    weights = to_ict_weights(take)  # the same as a (frames, 53) tensor in ICT order
    identity = model.sample(1, seed=a.identity)
    frames = model.transfer_expression(take, identity)  # identity-dependent, non-additive deformation
    print(f"{len(frames)} frames from {csv_path.name}")

    z = identity.codes.clone()
    z[:, model.code_slices["expression"]] = model.expression_from_blendshapes({"jawOpen": 0.0})
    rest = model.decode(z).vertices[0]
    save_animation_glb(out / "take.glb", frames.numpy(), model.faces.numpy(), rest.numpy(), fps=30.0)
    frames[:: max(1, len(frames) // 10)].export(out / "frames" / "frame_{i}.obj")

    w = weights.numpy()
    peaks = [int(w[:, j].argmax()) for j in np.argsort(-w.max(0)) if w[:, j].max() > 0.3]
    pick = sorted({0, *peaks[:10]}, key=int) if peaks else np.linspace(0, len(frames) - 1, 6).round().astype(int)
    pick = np.array(sorted(set(pick)))
    labels = [", ".join(f"{ICT_NAMES[j]} {weights[i, j]:.1f}" for j in np.argsort(-weights[i].numpy())[:1]
                        if weights[i, j] > 0.05) or "rest" for i in pick]  # fmt: skip
    save_png(render_grid(frames.numpy()[pick], model.faces.numpy(), size=160, ncols=len(pick), labels=labels),
             out / "strip.png")  # fmt: skip

    back = model.blendshapes_from_expression(frames)  # (frames, 53) in [0, 1]
    coded = [j for j, n in enumerate(ICT_NAMES) if n not in model.fallback_blendshapes]
    mae = float((back - weights)[:, coded].abs().mean())
    print(f"weights read back from the frames: mean absolute error {mae:.3f} per weight "
          f"({len(coded)} shapes carried by the code)")
    jaw = ICT_NAMES.index("jawOpen")
    print(f"jawOpen at the peak frame: in {float(weights[:, jaw].max()):.2f}, read back {float(back[:, jaw].max()):.2f}")
    print(f"wrote {out / 'take.glb'}, {out / 'strip.png'} and {out / 'frames'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
