"""Photo -> 3D face: dlib's 68-point detector, a contour-aware 2D fit, an overlay.

Needs the optional extra ``photo`` (``pip install "facemodel[photo]"``: ``dlib-bin`` for the
face detector and ``face-recognition-models`` for dlib's 68-point shape predictor). The
predictor was trained on the iBUG 300-W data set, whose images are licensed for research
use only: check that licence before using its landmarks commercially.

Image coordinates: x right, y down, pixels, origin at the top-left corner of the top-left
pixel (dlib's convention up to half a pixel).

Example:
    >>> from facemodel import FaceModel
    >>> from facemodel.photo import detect_landmarks, fit_photo
    >>> model = FaceModel.from_pretrained()
    >>> detect_landmarks("photo.jpg").shape          # (n_faces, 68, 2)
    >>> res = fit_photo(model, "photo.jpg")           # res.fit: the FitResult, res.overlay(): an image
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import NoFaceError, PhotoError, PhotoExtraMissingError

__all__ = ["PhotoError", "NoFaceError", "PhotoExtraMissingError", "load_image", "detect_landmarks", "fit_photo",
           "PhotoFit", "IMAGE_SUFFIXES"]  # fmt: skip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_INSTALL = 'pip install "facemodel[photo]"  (dlib-bin and face-recognition-models)'
_PREDICTOR = "shape_predictor_68_face_landmarks.dat"


def load_image(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a path, a PIL image, or an (H, W, 3) / (H, W) uint8 array.

    Raises:
        PhotoError: a missing or unreadable file, a file that is not an image, an array of
            another shape or dtype.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise PhotoError(f"image {str(path)!r} does not exist; pass the path of a photo (JPEG, PNG, ...)")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise PhotoError(f"{str(path)!r} is not a readable image ({exc}); pass a JPEG, PNG, BMP or TIFF photo") from exc
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise PhotoError(f"image must be a path, a PIL image or a uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise PhotoError(f"image arrays must be uint8 (0-255), got {image.dtype}; convert with (x * 255).astype(np.uint8)")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise PhotoError(f"image arrays must be (H, W, 3) or (H, W) with H, W >= 8, got {tuple(image.shape)}")
    return np.ascontiguousarray(image)


_DLIB: dict = {}


def _dlib():
    """(detector, predictor), loaded once."""
    if "pair" not in _DLIB:
        try:
            import dlib
        except ImportError as exc:
            raise PhotoExtraMissingError(f"photo fitting needs dlib: {_INSTALL}") from exc
        spec = importlib.util.find_spec("face_recognition_models")  # found without importing (it needs pkg_resources)
        path = None if spec is None or not spec.submodule_search_locations else \
            Path(list(spec.submodule_search_locations)[0]) / "models" / _PREDICTOR  # fmt: skip
        if path is None or not path.is_file():
            raise PhotoExtraMissingError(f"dlib's 68-point predictor ({_PREDICTOR}) is missing: {_INSTALL}")
        _DLIB["pair"] = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path)))
    return _DLIB["pair"]


def detect_landmarks(image: Any, *, upsample: int | None = None) -> np.ndarray:
    """68 iBUG landmarks of every face in a photo, largest face first.

    Args:
        image: a path, a PIL image, or an (H, W, 3) / (H, W) uint8 array.
        upsample: dlib's detector upsampling (each level doubles the image; 1 finds faces
            down to ~40 px). Default: 1, then 2 and 3 while no face is found.

    Returns:
        (n_faces, 68, 2) float64 pixel coordinates (x right, y down); (0, 68, 2) when no face
        is found.

    Raises:
        PhotoError: unreadable image. PhotoExtraMissingError: the ``photo`` extra is missing.
    """
    detector, predictor = _dlib()
    img = load_image(image)
    rects = []
    for level in (1, 2, 3) if upsample is None else (int(upsample),):
        rects = sorted(detector(img, level), key=lambda r: -r.area())
        if rects:
            break
    out = np.zeros((len(rects), 68, 2))
    for i, r in enumerate(rects):
        s = predictor(img, r)
        out[i] = [(p.x, p.y) for p in s.parts()]
    return out


@dataclass(eq=False)
class PhotoFit:
    """A model fitted to one face of a photo.

    Attributes:
        fit: the :class:`~facemodel.fitting.FitResult` (camera in pixels, y down).
        landmarks: (68, 2) detected points (px).
        image: (H, W, 3) uint8 photo.
        face: which detected face (0: the largest).
        n_faces: faces found in the photo.
        seconds: (detection, fit) wall times.
    """

    fit: Any
    landmarks: np.ndarray
    image: np.ndarray = field(repr=False)
    face: int
    n_faces: int
    seconds: tuple[float, float]
    _faces: np.ndarray = field(default=None, repr=False)

    def normalised_error(self) -> float:
        """Mean distance of the fitted to the detected landmarks over the outer-eye-corner distance,
        over all 68 points (docs/benchmarks.md's photo table averages eos-py's 66, the inner mouth
        corners left out, so that both fitters are scored alike: its figures differ slightly)."""
        proj = self.fit.transform_points(self.fit.landmarks)[0].double().cpu().numpy()
        iod = np.linalg.norm(self.landmarks[36] - self.landmarks[45])
        return float(np.linalg.norm(proj - self.landmarks, axis=1).mean() / iod)

    def overlay(self, *, alpha: float = 0.6) -> np.ndarray:
        """(H, W, 3) uint8: the photo with the fitted mesh rendered (shaded, z-buffered) over it
        at ``alpha``, detected landmarks green, fitted landmarks red."""
        from PIL import Image, ImageDraw

        from .geometry.raster import rasterize
        from .geometry.render import vertex_normals

        img = self.image.astype(np.float64)
        H, W = img.shape[:2]
        v = self.fit.vertices[0].double().cpu().numpy()
        R = self.fit.rotation[0].double().cpu().numpy()
        s = float(self.fit.scale[0])
        t = self.fit.translation[0].double().cpu().numpy()
        cam = v @ R.T  # camera frame; x, y are the image axes (up to scale)
        if self.fit.focal_length is not None:  # pinhole: through the camera centre
            cam = cam + t
            c = self.fit.principal_point[0].double().cpu().numpy()
            xy = float(self.fit.focal_length[0]) * cam[:, :2] / cam[:, 2:3] + c
        else:
            xy = s * cam[:, :2] + t
        # which way is the viewer: the side the nose tip points to
        lmk = self.fit.landmark_set
        nose = (cam[lmk.vertex_indices[30].numpy()] * lmk.barycentrics[30].numpy()[:, None]).sum(0)
        toward = 1.0 if nose[2] > cam[:, 2].mean() else -1.0
        depth = -toward * cam[:, 2]
        tri_id, bary = rasterize(xy, self._faces, H, W, depth=depth)
        n = vertex_normals(cam, self._faces) * toward
        if (n[:, 2].mean()) < 0:
            n = -n
        shade_v = np.clip(0.25 + 0.75 * np.abs(n @ np.array([0.3, -0.3, 0.9]) / np.linalg.norm([0.3, -0.3, 0.9])), 0, 1)
        hit = tri_id >= 0
        f = self._faces[tri_id[hit]]
        shade = (shade_v[f] * bary[hit]).sum(1)
        out = img.copy()
        col = np.array([200.0, 200.0, 215.0]) * shade[:, None]
        out[hit] = (1 - alpha) * img[hit] + alpha * col
        pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(pil)
        r = max(1.5, min(H, W) / 250)
        fitted = self.fit.transform_points(self.fit.landmarks)[0].double().cpu().numpy()
        for (x, y), c in [(p, (40, 220, 40)) for p in self.landmarks] + [(p, (230, 40, 40)) for p in fitted]:
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
        return np.asarray(pil)


def fit_photo(model: torch.nn.Module, image: Any, face: int = 0, **fit_kwargs) -> PhotoFit:
    """Detect the 68 landmarks of one face of a photo and fit the model to them.

    Args:
        model: a :class:`~facemodel.model.FaceModel`.
        image: a path, a PIL image, or an (H, W, 3) / (H, W) uint8 array.
        face: which face (0: the largest; faces are sorted by detection box area).
        fit_kwargs: passed to :func:`facemodel.fitting.fit_landmarks_2d` (defaults: the
            model prior, contour-aware jaw, Huber loss). With ``camera="pinhole"`` the
            principal point defaults to the image centre ``(W / 2, H / 2)``.

    Returns:
        :class:`PhotoFit`.

    Raises:
        PhotoError: unreadable image. NoFaceError: no face (or not ``face + 1`` faces).
        PhotoExtraMissingError: the ``photo`` extra is missing.
    """
    import time

    from .fitting import fit_landmarks_2d

    if isinstance(face, bool) or not isinstance(face, (int, np.integer)) or face < 0:
        raise PhotoError(f"face must be an integer >= 0 (0: the largest face), got {face!r}")
    img = load_image(image)
    t0 = time.perf_counter()
    pts = detect_landmarks(img)
    t1 = time.perf_counter()
    if len(pts) == 0:
        raise NoFaceError("no face found in the image; use a photo with a face at least ~80 px wide, seen from the front "
                          "or up to ~60 degrees to the side")  # fmt: skip
    if face >= len(pts):
        raise NoFaceError(f"face {face} asked for but only {len(pts)} face(s) found (0 is the largest); pass --face "
                          f"0..{len(pts) - 1}")  # fmt: skip
    dtype = next(model.parameters()).dtype
    npdt = np.float64 if dtype == torch.float64 else np.float32
    if fit_kwargs.get("camera") == "pinhole" and fit_kwargs.get("principal_point") is None:
        fit_kwargs = {**fit_kwargs, "principal_point": (img.shape[1] / 2.0, img.shape[0] / 2.0)}
    fit = fit_landmarks_2d(model, pts[face].astype(npdt), **fit_kwargs)
    _ = fit.vertices
    t2 = time.perf_counter()
    return PhotoFit(fit, pts[face], img, int(face), len(pts), (t1 - t0, t2 - t1), model.faces.cpu().numpy())


def is_image(path: Any) -> bool:
    """Whether a CLI input names a photo: an image suffix, or image magic bytes (JPEG, PNG,
    GIF, BMP, TIFF, WebP) in a file of another suffix."""
    p = Path(str(path))
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if p.suffix.lower() in (".npy", ".csv", ".json", ".pts", ".txt") or not p.is_file():
        return False
    with open(p, "rb") as f:
        head = f.read(12)
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")) or \
        (head[:4] == b"RIFF" and head[8:12] == b"WEBP")  # fmt: skip


def photo_outputs(model, res: PhotoFit) -> dict:
    """The arrays a photo fit writes: codes, camera, landmarks, plausibility, blendshape weights."""
    fit = res.fit
    out = {
        "codes": fit.codes[0].double().cpu().numpy(),
        "scale": float(fit.scale[0]),
        "rotation": fit.rotation[0].double().cpu().numpy(),
        "translation": fit.translation[0].double().cpu().numpy(),
        "landmarks_detected": res.landmarks,
        "landmarks_fitted": fit.transform_points(fit.landmarks)[0].double().cpu().numpy(),
        "plausibility": float(fit.plausibility[0]),
        "typical_range": np.asarray(fit.typical_range),
        "normalised_landmark_error": res.normalised_error(),
        "face": res.face,
        "n_faces": res.n_faces,
    }
    if fit.focal_length is not None:  # pinhole: translation (3,) mm, the camera frame
        out["camera"] = "pinhole"
        out["focal_length"] = float(fit.focal_length[0])
        out["principal_point"] = fit.principal_point[0].double().cpu().numpy()
    for name, sl in model.code_slices.items():
        out[f"codes_{name}"] = out["codes"][sl]
    if getattr(model, "expression_map", None) is not None:
        w = model.blendshapes_from_expression(fit.codes, spelling="ict")
        out["blendshapes"] = {k: float(v[0]) for k, v in w.items()}
    return out


def cmd_fit_photo(model, args) -> int:
    """``facemodel fit photo.jpg [--face K] --out face.obj --png overlay.png [--codes f.json|.npz]``:
    every output is computed first and written atomically; on an error nothing is written."""
    import json

    from PIL import Image

    from ._fs import atomic_file, check_writable_parent, refuse_existing
    from .geometry.mesh_io import save_mesh

    codes_path = args.codes
    if codes_path is None and args.out:
        codes_path = str(Path(args.out).with_suffix(".json"))
    if codes_path is not None and Path(codes_path).suffix.lower() not in (".json", ".npz"):
        raise PhotoError(f"--codes must end in .json or .npz, got {codes_path!r}")
    if not args.out and not args.png and codes_path is None:
        raise PhotoError("nothing to write: pass --out face.obj and/or --png overlay.png (and --codes codes.json)")
    if args.out and Path(args.out).suffix.lower() not in (".obj", ".ply", ".glb", ".off", ".stl"):
        raise PhotoError(f"--out must end in .obj, .ply, .glb, .off or .stl, got {args.out!r}")
    refuse_existing([args.out, args.png, codes_path], getattr(args, "overwrite", False))  # before detecting
    for p in (args.out, args.png, codes_path):
        if p:
            check_writable_parent(p)
    kwargs = {} if args.reg is None else {"reg": args.reg, "prior": "model"}
    if getattr(args, "noise_px", None) is not None:
        kwargs["noise_px"] = args.noise_px
    camera = getattr(args, "camera", "scaled_orthographic")
    focal = getattr(args, "focal_length", None)
    if camera == "pinhole":
        kwargs.update(camera="pinhole", focal_length=focal)
    elif focal is not None:
        raise PhotoError("--focal-length needs --camera pinhole (the scaled-orthographic camera has no focal length)")
    res = fit_photo(model, args.points, face=args.face, **kwargs)
    data = photo_outputs(model, res)
    overlay = res.overlay() if args.png else None
    verts = res.fit.vertices[0].cpu().numpy()
    written = []
    try:
        if args.out:
            written.append(save_mesh(args.out, verts, model.faces.cpu().numpy()))
        if codes_path:
            if codes_path.lower().endswith(".npz"):
                flat = {k: (np.asarray(list(v.values())) if isinstance(v, dict) else np.asarray(v)) for k, v in data.items()}
                if "blendshapes" in data:
                    flat["blendshape_names"] = np.asarray(list(data["blendshapes"]))
                with atomic_file(codes_path) as f:
                    np.savez(f, **flat)
            else:
                js = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}
                with atomic_file(codes_path, "w") as f:
                    json.dump(js, f, indent=1)
            written.append(Path(codes_path))
        if overlay is not None:
            with atomic_file(args.png) as f:
                Image.fromarray(overlay).save(f, format="PNG")
            written.append(Path(args.png))
    except BaseException:
        for p in written:
            Path(p).unlink(missing_ok=True)
        raise
    print(f"face {res.face} of {res.n_faces}: normalised landmark error {data['normalised_landmark_error']:.4f}, "
          f"plausibility {data['plausibility']:.2f} (prior's 1-99 %: {res.fit.typical_range[0]:.1f}-"
          f"{res.fit.typical_range[2]:.1f}), detection {res.seconds[0]:.2f} s, fit {res.seconds[1]:.2f} s")  # fmt: skip
    for p in written:
        print(p)
    return 0
