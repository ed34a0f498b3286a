"""``facemodel demo``: a local web page (Gradio) to try the model without writing code.

    pip install "facemodel[demo]"
    facemodel demo [--model DIR|REPO] [--host 127.0.0.1] [--port 7860]

Tabs: a random identity (seed, truncation) with an expression label and its strength; the
ARKit blendshapes as grouped sliders; expression transfer between two faces; a photo fit
(needs the ``photo`` extra). Every tab answers with a 3D view (GLB, mm) and a 512 px PNG
(front and side). Each tab is also an API endpoint (``api_name`` below), so the page can be
driven by ``gradio_client``:

    >>> from gradio_client import Client
    >>> glb, png = Client("http://127.0.0.1:7860/").predict(3, 1.0, "happiness", 1.0, api_name="/sample")

Outputs go to a fresh temporary folder per call (Gradio serves them from there).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import FaceModelError

__all__ = ["build_demo", "main", "BLENDSHAPE_GROUPS", "RANDOM"]

RANDOM = "random"  # the expression choice that keeps the seed's own random expression code

#: ARKit names shown as sliders, by face region (``tongueOut`` has no ICT shape: left out).
BLENDSHAPE_GROUPS: dict[str, tuple[str, ...]] = {
    "Jaw": ("jawOpen", "jawForward", "jawLeft", "jawRight"),
    "Mouth": ("mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft",
              "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight",
              "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
              "mouthShrugUpper", "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
              "mouthUpperUpLeft", "mouthUpperUpRight"),
    "Eyes": ("eyeBlinkLeft", "eyeBlinkRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
             "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
             "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight"),
    "Brows": ("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight"),
    "Cheeks and nose": ("cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight"),
}  # fmt: skip
SLIDER_NAMES: tuple[str, ...] = tuple(n for names in BLENDSHAPE_GROUPS.values() for n in names)


def _require_gradio():
    try:
        import gradio as gr
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise FaceModelError('the demo needs Gradio: pip install "facemodel[demo]"') from exc
    return gr


class _Backend:
    """The model calls behind the page; each returns (GLB path, PNG path) in a fresh folder."""

    def __init__(self, model, size: int = 512) -> None:
        self.model = model
        self.size = size
        self.root = Path(tempfile.mkdtemp(prefix="facemodel-demo-"))

    def _write(self, faces, labels: Sequence[str] | None = None, shown=None) -> tuple[str, str]:
        from .geometry.render import render_grid, save_png

        out = Path(tempfile.mkdtemp(dir=self.root))
        glb = faces[len(faces) - 1].export(out / "face.glb")[0]  # the result is the last face
        v = faces.numpy() if shown is None else shown
        image = render_grid(v, self.model.faces.cpu().numpy(), views=("front", "side"), size=self.size,
                            ncols=len(v), labels=labels)  # fmt: skip
        return str(glb), str(save_png(image, out / "face.png"))

    def _identity(self, seed, truncation: float):
        seed = int(seed)
        if not 0.0 < float(truncation) <= 2.0:
            raise FaceModelError(f"truncation must lie in (0, 2], got {truncation}")
        return self.model.sample(1, seed=seed, truncation=float(truncation))

    def sample(self, seed, truncation, expression, strength) -> tuple[str, str]:
        """A face of identity ``seed`` with an expression label code scaled by ``strength``
        (0: the neutral label code, 1: the label code, >1 exaggerated)."""
        face = self._identity(seed, truncation)
        if expression and expression != RANDOM:
            codes = self.model.label_codes("expression")
            label = codes[self.model.label_index("expression", expression)]
            names = [n.lower() for n in self.model.label_names.get("expression", [])]
            rest = codes[names.index("neutral")] if "neutral" in names else torch.zeros_like(label)
            z = face.codes.clone()
            z[:, self.model.code_slices["expression"]] = rest + float(strength) * (label - rest)
            face = self.model.decode(z)
        return self._write(face)

    def blendshapes(self, seed, truncation, *weights) -> tuple[str, str]:
        """A face of identity ``seed`` driven by the ARKit sliders (in :data:`SLIDER_NAMES` order)."""
        if len(weights) != len(SLIDER_NAMES):
            raise FaceModelError(f"expected {len(SLIDER_NAMES)} blendshape weights, got {len(weights)}")
        identity = self._identity(seed, truncation)
        spec = {name: float(w) for name, w in zip(SLIDER_NAMES, weights)}
        return self._write(self.model.transfer_expression(spec, identity))

    def transfer(self, source_seed, target_seed, truncation) -> tuple[str, str]:
        """The target face's identity with the source face's expression."""
        source, target = self._identity(source_seed, truncation), self._identity(target_seed, truncation)
        moved = self.model.transfer_expression(source, target)
        shown = torch.cat([source.vertices, target.vertices, moved.vertices]).cpu().float().numpy()
        return self._write(moved, labels=["source (expression)", "target (identity)", "result"], shown=shown)

    def photo(self, image_path, face_index=0) -> tuple[str, str, str]:
        """Fit the model to a photo: (GLB, render PNG, overlay PNG of the landmarks used)."""
        from PIL import Image, ImageDraw

        if not image_path:
            raise FaceModelError("upload a photo first")
        try:
            from . import photo  # the photo extra: landmark detection and the photo fit
        except ImportError as exc:
            raise FaceModelError(f'the photo tab needs the photo extra: pip install "facemodel[photo]" ({exc})') from exc
        image = np.asarray(Image.open(image_path).convert("RGB"))
        out = Path(tempfile.mkdtemp(dir=self.root))
        face_index = int(face_index)
        if hasattr(photo, "fit_photo"):
            result = photo.fit_photo(self.model, image, face=face_index)  # a facemodel.photo.PhotoFit
            vertices, codes = result.fit.vertices, result.fit.codes
            overlay = Image.fromarray(result.overlay())  # the fitted mesh over the photo, landmarks marked
        else:
            points = np.asarray(photo.detect_landmarks(image))
            if points.ndim != 3 or points.shape[0] == 0:
                raise FaceModelError("no face found in the photo; try a frontal, well-lit portrait")
            if not 0 <= face_index < points.shape[0]:
                raise FaceModelError(f"face {face_index} asked for, {points.shape[0]} found (0..{points.shape[0] - 1})")
            fit = self.model.fit_landmarks_2d(torch.as_tensor(points[face_index], dtype=torch.float32))
            vertices, codes = fit.vertices, fit.codes
            overlay = Image.fromarray(image)
            draw = ImageDraw.Draw(overlay)
            r = max(2, overlay.size[0] // 200)
            for x, y in points[face_index]:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 64, 64))
        from .outputs import Faces

        faces = Faces(torch.as_tensor(vertices).reshape(1, -1, 3), torch.as_tensor(codes).reshape(1, -1),
                      self.model.faces, self.model.code_slices)  # fmt: skip
        glb, png = self._write(faces)
        overlay_path = out / "overlay.png"
        overlay.save(overlay_path)
        return glb, png, str(overlay_path)


def build_demo(model=None, *, size: int = 512):
    """The Gradio ``Blocks`` of the demo for ``model`` (a :class:`~facemodel.model.FaceModel`,
    a folder or Hub id, or ``None`` for the released weights). Launch it with ``.launch()``."""
    gr = _require_gradio()
    from .model import FaceModel

    if model is None or isinstance(model, (str, Path)):
        model = FaceModel.from_pretrained(model)
    backend = _Backend(model, size=size)
    labels = [RANDOM] + list(model.label_names.get("expression", []))
    first_label = labels[min(5, len(labels) - 1)]  # happiness in the released weights
    first = backend.sample(0, 1.0, first_label, 1.0)  # the page opens with a face
    has_map = model.expression_map is not None if hasattr(model, "expression_map") else True

    def guarded(fn):
        def call(*args):
            try:
                return fn(*args)
            except FaceModelError as exc:
                raise gr.Error(str(exc)) from exc

        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return call

    with gr.Blocks(title="facemodel demo") as demo:
        gr.Markdown("# facemodel\nA decoupled 3D face model: identity and expression set apart. "
                    "Units are millimetres; the 3D view can be rotated.")  # fmt: skip
        with gr.Tab("Sample"):
            with gr.Row():
                with gr.Column():
                    seed = gr.Number(value=0, precision=0, label="identity seed")
                    trunc = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="truncation (lower: more typical faces)")
                    expr = gr.Dropdown(labels, value=first_label, label="expression label")
                    strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="expression strength")
                    go = gr.Button("Generate", variant="primary")
                with gr.Column():
                    view = gr.Model3D(value=first[0], label="3D (GLB)")
                    png = gr.Image(value=first[1], type="filepath", label="render (front, side)")
            go.click(guarded(backend.sample), [seed, trunc, expr, strength], [view, png], api_name="sample")
        with gr.Tab("Blendshapes (ARKit)"):
            if not has_map:
                gr.Markdown("This model has no blendshape map (`python -m facemodel.training.blendshape_map`).")
            with gr.Row():
                with gr.Column():
                    bs_seed = gr.Number(value=7, precision=0, label="identity seed")
                    bs_trunc = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="truncation")
                    sliders = []
                    for group, names in BLENDSHAPE_GROUPS.items():
                        with gr.Accordion(group, open=group == "Jaw"):
                            for name in names:
                                sliders.append(gr.Slider(0.0, 1.0, value=0.0, step=0.01, label=name))
                    bs_go = gr.Button("Drive", variant="primary")
                with gr.Column():
                    bs_view = gr.Model3D(label="3D (GLB)")
                    bs_png = gr.Image(type="filepath", label="render (front, side)")
            bs_go.click(guarded(backend.blendshapes), [bs_seed, bs_trunc, *sliders], [bs_view, bs_png],
                        api_name="blendshapes")  # fmt: skip
        with gr.Tab("Transfer"):
            with gr.Row():
                with gr.Column():
                    src = gr.Number(value=1, precision=0, label="source seed (gives the expression)")
                    tgt = gr.Number(value=2, precision=0, label="target seed (keeps its identity)")
                    tr_trunc = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="truncation")
                    tr_go = gr.Button("Transfer", variant="primary")
                with gr.Column():
                    tr_view = gr.Model3D(label="result, 3D (GLB)")
                    tr_png = gr.Image(type="filepath", label="source, target, result")
            tr_go.click(guarded(backend.transfer), [src, tgt, tr_trunc], [tr_view, tr_png], api_name="transfer")
        with gr.Tab("Photo"):
            gr.Markdown("Fit the model to a face in a photo (needs `pip install \"facemodel[photo]\"`).")
            with gr.Row():
                with gr.Column():
                    photo_in = gr.Image(type="filepath", label="photo")
                    face_i = gr.Number(value=0, precision=0, label="face index (several faces in the photo)")
                    ph_go = gr.Button("Fit", variant="primary")
                with gr.Column():
                    ph_view = gr.Model3D(label="fitted face, 3D (GLB)")
                    ph_png = gr.Image(type="filepath", label="render")
                    ph_overlay = gr.Image(type="filepath", label="landmarks on the photo")
            ph_go.click(guarded(backend.photo), [photo_in, face_i], [ph_view, ph_png, ph_overlay], api_name="photo")
    demo.backend = backend
    return demo


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """``facemodel demo``: serve the page until interrupted."""
    if args is None:
        p = argparse.ArgumentParser(prog="facemodel demo", description="a local web page to try the model")
        add_arguments(p)
        args = p.parse_args(argv)
    demo = build_demo(args.model)
    print(f"facemodel demo on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(demo.backend.root)])
    return 0


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", default=None, help="model folder or Hub repo id (default: the released weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    return p


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
