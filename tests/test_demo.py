"""``facemodel demo`` driven through a real HTTP client: the page is served on 127.0.0.1 and every
endpoint is called with ``gradio_client``; the returned GLB must load in trimesh and the PNG in
PIL. The demo deps are in the ``test`` extra, so CI runs this."""

from __future__ import annotations

import socket
import sys
import types

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason='needs the demo extra: pip install ".[demo]"')

from facemodel.demo import SLIDER_NAMES, build_demo  # noqa: E402


@pytest.fixture(scope="module")
def client(released):
    demo = build_demo(released, size=96)  # small tiles keep the test quick; the page uses 512
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(demo.backend.root)])  # fmt: skip
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def _check(glb: str, png: str, tiles: int, size: int = 96) -> np.ndarray:
    mesh = trimesh.load(glb, force="mesh", process=False)
    assert mesh.vertices.shape == (9409, 3)
    image = Image.open(png)
    assert image.size[0] == 2 * tiles * size  # front and side per face
    assert np.asarray(image).std() > 10  # a rendered face, not a blank canvas
    return np.asarray(mesh.vertices)


def test_sample_endpoint_gives_the_labelled_face(client, released):
    glb, png = client.predict(3, 1.0, "happiness", 1.0, api_name="/sample")
    v = _check(glb, png, tiles=1)
    z = released.sample(1, seed=3).codes.clone()
    z[:, released.code_slices["expression"]] = released.label_codes("expression")[
        released.label_index("expression", "happiness")]  # fmt: skip
    np.testing.assert_allclose(v, released.decode(z).numpy()[0], atol=1e-3)
    # strength 0 is the neutral label code: a different face from strength 1
    glb0, _ = client.predict(3, 1.0, "happiness", 0.0, api_name="/sample")
    assert np.abs(trimesh.load(glb0, force="mesh", process=False).vertices - v).max() > 0.5


def test_blendshape_endpoint_follows_the_sliders(client, released):
    weights = [0.0] * len(SLIDER_NAMES)
    weights[SLIDER_NAMES.index("jawOpen")] = 0.8
    glb, png = client.predict(7, 1.0, *weights, api_name="/blendshapes")
    v = _check(glb, png, tiles=1)
    expected = released.transfer_expression({"jawOpen": 0.8}, released.sample(1, seed=7))
    np.testing.assert_allclose(v, expected.numpy()[0], atol=1e-3)


def test_transfer_endpoint_swaps_the_expression(client, released):
    glb, png = client.predict(1, 2, 1.0, api_name="/transfer")
    v = _check(glb, png, tiles=3)  # source, target, result
    expected = released.transfer_expression(released.sample(1, seed=1), released.sample(1, seed=2))
    np.testing.assert_allclose(v, expected.numpy()[0], atol=1e-3)


def test_errors_reach_the_client_as_messages(client):
    with pytest.raises(Exception, match="maximum value 2"):  # the page's own range check
        client.predict(3, 5.0, "happiness", 1.0, api_name="/sample")
    with pytest.raises(Exception, match="upload a photo first"):  # FaceModelError -> the message
        client.predict(None, 0, api_name="/photo")


@pytest.fixture()
def photo_image(tmp_path, released):
    face = released.sample(1, seed=11)
    from facemodel.geometry.render import render_grid, save_png

    return save_png(render_grid(face.numpy(), released.faces.numpy(), size=128), tmp_path / "photo.png")


def test_photo_endpoint_without_the_photo_extra_says_what_to_install(client, photo_image, monkeypatch):
    """dlib made unimportable (the server runs in this process): the tab names the extra."""
    import facemodel.photo

    monkeypatch.setitem(sys.modules, "dlib", None)  # ``import dlib`` raises ImportError
    monkeypatch.setattr(facemodel.photo, "_DLIB", {})  # no detector loaded earlier
    with pytest.raises(Exception, match=r"facemodel\[photo\]"):
        client.predict(gradio_client.handle_file(str(photo_image)), 0, api_name="/photo")


def test_photo_endpoint_fits_the_detected_landmarks(client, released, photo_image, monkeypatch):
    """The tab's wiring with a landmark detector that reports the true 2D landmarks of the
    rendered face (orthographic, pixels): the fit must come back as a face near it."""
    target = released.sample(1, seed=11)
    lm = target.vertices[0, released.landmarks].numpy()
    pixels = np.stack([64 + lm[:, 0], 64 - lm[:, 1]], 1)[None]  # (1, 68, 2), y down
    fake = types.ModuleType("facemodel.photo")
    fake.detect_landmarks = lambda image: pixels
    monkeypatch.setitem(sys.modules, "facemodel.photo", fake)
    monkeypatch.setattr("facemodel.photo", fake, raising=False)
    glb, png, overlay = client.predict(gradio_client.handle_file(str(photo_image)), 0, api_name="/photo")
    v = _check(glb, png, tiles=1)
    assert Image.open(overlay).size == (128, 128)
    fit = released.fit_landmarks_2d(torch.as_tensor(pixels[0], dtype=torch.float32))
    np.testing.assert_allclose(v, fit.vertices.numpy()[0], atol=1e-3)
    with pytest.raises(Exception, match="face 3 asked for, 1 found"):
        client.predict(gradio_client.handle_file(str(photo_image)), 3, api_name="/photo")


def test_photo_endpoint_fits_a_real_photo(client, tmp_path):
    """The real pipeline (facemodel.photo: dlib's detector and 68-point predictor, the photo fit)
    on scikit-image's bundled astronaut photo."""
    import skimage.data

    path = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    glb, png, overlay = client.predict(gradio_client.handle_file(str(path)), 0, api_name="/photo")
    _check(glb, png, tiles=1)
    assert Image.open(overlay).size == (512, 512)  # the photo's size, the fit drawn over it
