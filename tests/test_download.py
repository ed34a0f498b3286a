"""Download path of ICT-FaceKit, against archives built here and served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from facemodel.data.download import (
    convert_ict_checkout,
    download_file,
    download_ict,
    safe_extract_zip,
    upstream_table,
)
from facemodel.data.ict import ICTSource
from facemodel.errors import (
    ChecksumMismatchError,
    DownloadError,
    OutputPathError,
    UnsafeArchiveError,
)
from facemodel.geometry.mesh_io import read_obj_vertices

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOP = f"ICT-FaceKit-{COMMIT}"
EXPRESSIONS = ["jawOpen", "mouthSmile_L"]

# ---- a tiny upstream-shaped archive -------------------------------------------------
_QUADS = "f 1/1/1 2/2/2 5/5/5 4/4/4\nf 2 3 6 5\n"


def _obj(rng: np.random.Generator) -> bytes:
    v = rng.normal(scale=10.0, size=(6, 3))
    lines = ["# tiny test mesh", "mtllib none.mtl"]
    lines += ["v %.6f %.6f %.6f" % tuple(r) for r in v]
    lines += ["vt 0.1 0.2"] * 6
    return ("\n".join(lines) + "\n" + _QUADS).encode()


def _upstream_files() -> dict[str, bytes]:
    """'FaceXModel/<name>' (and 'LICENSE') -> bytes, relative to the top folder."""
    rng = np.random.default_rng(7)
    files = {"FaceXModel/generic_neutral_mesh.obj": _obj(rng)}
    for i in range(2):
        files[f"FaceXModel/identity{i:03d}.obj"] = _obj(rng)
    for name in EXPRESSIONS:
        files[f"FaceXModel/{name}.obj"] = _obj(rng)
    files["FaceXModel/vertex_indices.json"] = json.dumps(
        {"expressions": EXPRESSIONS, "idx_to_landmark_verts": [0, 1, 2]}
    ).encode()
    files["LICENSE"] = b"MIT License (test)\n"
    return files


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{TOP}/", b"")
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


FILES = _upstream_files()
ARCHIVE = _zip({f"{TOP}/{k}": v for k, v in FILES.items()})
OBJ_SHA = {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items() if k.endswith(".obj")}


# ---- a local HTTP server -------------------------------------------------------------
class Server:
    """Serves ``routes[path] = (status, body, content_length_override)``; counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                status, body, length = server.routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes, *, status: int = 200, length: int | None = None) -> str:
        self.routes[path] = (status, body, length)
        return self.base + path


@pytest.fixture()
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _leftovers(cache: Path) -> list[Path]:
    """Everything under ``cache`` except the (empty) ``ict-facekit`` folder."""
    return [p for p in cache.rglob("*") if p != cache / "ict-facekit"]


# ---- tests ---------------------------------------------------------------------------
def test_round_trip_then_cache(server, tmp_path):
    url = server.add("/ict.zip", ARCHIVE)
    cache = tmp_path / "cache"
    out = download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert out == cache / "ict-facekit" / COMMIT
    assert len(server.requests) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "LICENSE", "generic_neutral_mesh.obj", "manifest.json", "shapes.npz", "vertex_indices.json",
    ]
    assert sorted(p.name for p in (cache / "ict-facekit").iterdir()) == [COMMIT]  # no temporaries

    ict = ICTSource(out)
    assert ict.upstream_commit == COMMIT
    assert ict.identity_names == ["identity000", "identity001"]
    assert ict.expression_names == EXPRESSIONS
    src = tmp_path / "src"
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    s = ict._shapes
    expected = {
        "generic_neutral": read_obj_vertices(src / "FaceXModel/generic_neutral_mesh.obj"),
        "identity_shapes": np.stack([read_obj_vertices(src / f"FaceXModel/identity{i:03d}.obj") for i in range(2)]),
        "expression_shapes": np.stack([read_obj_vertices(src / f"FaceXModel/{e}.obj") for e in EXPRESSIONS]),
    }
    for key, want in expected.items():
        assert s[key].dtype == np.float32
        assert s[key].tobytes() == want.astype(np.float32).tobytes(), key
    assert ict.mesh.faces.shape == (4, 3)
    assert (out / "generic_neutral_mesh.obj").read_bytes() == FILES["FaceXModel/generic_neutral_mesh.obj"]
    assert json.loads((out / "manifest.json").read_text())["sha256_of_upstream_obj_files"] == OBJ_SHA

    again = download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert again == out and len(server.requests) == 1  # served from the cache

    download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False, force=True)
    assert len(server.requests) == 2
    assert sorted(p.name for p in (cache / "ict-facekit").iterdir()) == [COMMIT]


def test_truncated_download(server, tmp_path):
    url = server.add("/short.zip", ARCHIVE[:500], length=len(ARCHIVE))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"(?i)truncated.*500 of \d+ bytes.*retry; check the network/proxy") as info:
        download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert url in str(info.value)
    assert _leftovers(cache) == []


def test_download_file_truncated_leaves_nothing(server, tmp_path):
    url = server.add("/short.bin", b"x" * 100, length=1000)
    with pytest.raises(DownloadError, match="100 of 1000 bytes"):
        download_file(url, tmp_path / "f.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_archive_checksum_mismatch(server, tmp_path):
    url = server.add("/ict.zip", ARCHIVE)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match="expected 0{64}, got [0-9a-f]{64}"):
        download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, archive_sha256="0" * 64, progress=False)
    assert _leftovers(cache) == []
    # the right checksum passes
    good = hashlib.sha256(ARCHIVE).hexdigest()
    download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, archive_sha256=good, progress=False)


def test_tampered_obj(server, tmp_path):
    files = dict(FILES)
    files["FaceXModel/identity001.obj"] = files["FaceXModel/identity001.obj"].replace(b"v ", b"v  ", 1)
    url = server.add("/tampered.zip", _zip({f"{TOP}/{k}": v for k, v in files.items()}))
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match="identity001.obj"):
        download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert _leftovers(cache) == []


def test_obj_not_in_table_is_refused(tmp_path):
    src = tmp_path / "src" / TOP
    for rel, data in FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    partial = {k: v for k, v in OBJ_SHA.items() if "jawOpen" not in k}
    with pytest.raises(FileNotFoundError, match="jawOpen.obj has no recorded sha256"):
        convert_ict_checkout(tmp_path / "src", tmp_path / "out", obj_sha256=partial)
    assert not (tmp_path / "out").exists()
    out = convert_ict_checkout(tmp_path / "src", tmp_path / "out", obj_sha256=OBJ_SHA)
    assert ICTSource(out).upstream_commit == COMMIT


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "C:/evil.txt", f"{TOP}/../../evil.txt"])
def test_unsafe_archive(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{TOP}/LICENSE", b"fine")
        zf.writestr(zipfile.ZipInfo(evil), b"evil")
    archive.write_bytes(buf.getvalue())
    dest = tmp_path / "a" / "b" / "dest"
    before = sorted(tmp_path.rglob("*"))
    tmp_evil_existed = Path("/tmp/evil.txt").exists()
    with pytest.raises(UnsafeArchiveError, match="evil.txt"):
        safe_extract_zip(archive, dest)
    assert sorted(tmp_path.rglob("*")) == before  # nothing outside, and no dest at all
    assert not dest.exists()
    assert tmp_evil_existed or not Path("/tmp/evil.txt").exists()


def test_unsafe_archive_served(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{TOP}/LICENSE", b"fine")
        zf.writestr("../evil.txt", b"evil")
    url = server.add("/evil.zip", buf.getvalue())
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError):
        download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert _leftovers(cache) == []
    assert not (tmp_path / "evil.txt").exists() and not (cache / "evil.txt").exists()


def test_symlink_entry_rejected(tmp_path):
    info = zipfile.ZipInfo(f"{TOP}/link")
    info.external_attr = (0o120777 << 16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    (tmp_path / "l.zip").write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(tmp_path / "l.zip", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_http_404(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_ict(cache, commit=COMMIT, url=server.base + "/missing.zip", obj_sha256=OBJ_SHA, progress=False)
    assert _leftovers(cache) == []


def test_connection_refused(tmp_path):
    s = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = s.server_address[1]
    s.server_close()  # nothing listens there now
    with pytest.raises(DownloadError, match="network/proxy"):
        download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache(server, tmp_path, monkeypatch):
    url = server.add("/ict.zip", ARCHIVE)
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        if os.access(cache, os.W_OK):  # root ignores modes: make the permission check see them
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, m, **k: False if m & os.W_OK else real_access(p, m, **k))
        with pytest.raises((OutputPathError, DownloadError), match="writ|creat"):
            download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
        assert server.requests == []
    finally:
        cache.chmod(0o700)


def test_packaged_table_matches_real_manifest(ict_dir):
    manifest = json.loads((ict_dir / "manifest.json").read_text())
    table = upstream_table()
    real = manifest["sha256_of_upstream_obj_files"]
    assert len(real) == 154
    assert table["obj_sha256"] == real
    assert table["commit"] == manifest["upstream_commit"]
    assert table["repository"] == manifest["upstream_repository"]
    assert table["archive_url_template"].format(commit="abc") == "https://github.com/ICT-VGL/ICT-FaceKit/archive/abc.zip"
    # the packed names it implies: neutral + 100 identities + the 53 expressions in order
    indices = json.loads((ict_dir / "vertex_indices.json").read_text())
    implied = {"FaceXModel/generic_neutral_mesh.obj"}
    implied |= {f"FaceXModel/identity{i:03d}.obj" for i in range(100)}
    implied |= {f"FaceXModel/{e}.obj" for e in indices["expressions"]}
    assert implied == set(real)


def test_cache_dir_is_a_file(server, tmp_path):
    """Also runs as root (where chmod does not block writes): the cache path is a file."""
    url = server.add("/ict.zip", ARCHIVE)
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    with pytest.raises(OutputPathError, match="cannot create the folder"):
        download_ict(cache, commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert server.requests == []
    assert cache.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [cache]


def test_foreign_folder_is_not_overwritten(server, tmp_path):
    url = server.add("/ict.zip", ARCHIVE)
    target = tmp_path / "cache" / "ict-facekit" / COMMIT
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("keep")
    with pytest.raises(OutputPathError, match="force=True"):
        download_ict(tmp_path / "cache", commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False)
    assert server.requests == [] and (target / "mine.txt").read_text() == "keep"
    download_ict(tmp_path / "cache", commit=COMMIT, url=url, obj_sha256=OBJ_SHA, progress=False, force=True)
    assert ICTSource(target).expression_names == EXPRESSIONS and not (target / "mine.txt").exists()
