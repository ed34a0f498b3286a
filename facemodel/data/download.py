"""Downloading the ICT Face Model from its upstream repository and packing it locally.

The upstream archive (``https://github.com/ICT-VGL/ICT-FaceKit/archive/<commit>.zip``)
has no published checksum, so integrity is guarded per file: every ``FaceXModel/*.obj``
that goes into the packed folder must match the sha256 recorded in the packaged table
``ict_upstream.json``. Every write is atomic: a failed or interrupted download leaves
nothing half-written in the cache.

Example:
    >>> from facemodel.data.download import download_ict
    >>> from facemodel.data.ict import ICTSource
    >>> ict = ICTSource(download_ict())      # ~/.cache/facemodel/ict-facekit/<commit>
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import requests
from tqdm.auto import tqdm

from .._fs import atomic_dir, atomic_file, check_writable_parent, sha256_file
from ..errors import (
    ChecksumMismatchError,
    DataSourceError,
    DownloadError,
    OutputPathError,
    TopologyMismatchError,
    UnsafeArchiveError,
)
from ..geometry.mesh_io import read_obj_vertices
from .ict import ICT_COMMIT, ICT_REPOSITORY, REQUIRED_FILES, default_ict_dir

__all__ = [
    "download_file",
    "safe_extract_zip",
    "convert_ict_checkout",
    "download_ict",
    "upstream_table",
]

_MODEL_DIR = "FaceXModel"
_IDENTITY_RE = re.compile(r"identity(\d{3})\.obj")


@lru_cache(maxsize=1)
def upstream_table() -> dict:
    """The packaged ``ict_upstream.json``: repository, commit, archive URL template and
    ``obj_sha256`` (``'FaceXModel/<name>.obj'`` -> sha256 hex digest) of the pinned commit."""
    with open(Path(__file__).with_name("ict_upstream.json"), encoding="utf-8") as f:
        return json.load(f)


# ---- generic download and extraction ------------------------------------------------
def _wire_bytes(resp: requests.Response) -> int:
    try:
        return int(resp.raw.tell())
    except Exception:  # not a urllib3 response
        return 0


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest``, atomically.

    The body is streamed into a temporary file beside ``dest`` while it is hashed; the
    file is renamed onto ``dest`` only once its size and checksum are right.

    Args:
        url: http(s) URL.
        dest: target file; its parent folder is created.
        expected_sha256: hex sha256 the file must have (None: not checked).
        progress: show a tqdm progress bar (bytes).
        timeout: seconds to wait for the connection and between received bytes
            (not a limit on the whole transfer).
        chunk_size: bytes read at a time.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: HTTP error status, connection failure or timeout, or a body
            shorter than its Content-Length (truncated).
        ChecksumMismatchError: the body's sha256 is not ``expected_sha256``.
        OutputPathError: the folder of ``dest`` cannot be written.
    """
    dest = check_writable_parent(dest)
    try:
        resp = requests.get(url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"})
    except requests.RequestException as exc:
        raise DownloadError(f"cannot download {url}: {exc}. Retry; check the network/proxy.") from exc
    with resp:
        if resp.status_code >= 400:
            raise DownloadError(
                f"cannot download {url}: HTTP {resp.status_code} {resp.reason}. "
                "Check the URL (and the commit it names)."
            )
        length = resp.headers.get("Content-Length")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        expected_size = int(length) if length and length.isdigit() and not encoded else None
        h = hashlib.sha256()
        received = 0
        with atomic_file(dest, "wb") as f, tqdm(
            total=expected_size, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            try:
                for block in resp.iter_content(chunk_size=chunk_size):
                    f.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
            except requests.RequestException as exc:
                # bytes urllib3 read but dropped when the body ended early still count
                received = max(received, _wire_bytes(resp))
                if expected_size is None or received >= expected_size:
                    raise DownloadError(
                        f"download of {url} failed after {received} bytes: {exc}. "
                        "Retry; check the network/proxy."
                    ) from exc
                # fall through: reported as truncated below
            if expected_size is not None and received != expected_size:
                raise DownloadError(
                    f"download of {url} is truncated: got {received} of {expected_size} bytes. "
                    "Retry; check the network/proxy."
                )
            if expected_sha256 is not None and h.hexdigest() != expected_sha256.lower():
                raise ChecksumMismatchError(
                    f"{url}: sha256 mismatch, expected {expected_sha256.lower()}, got {h.hexdigest()}. "
                    "The file is corrupt or has changed upstream; retry, or check the expected checksum."
                )
    return dest


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/"):
        return "an absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "a drive letter"
    if ".." in PurePosixPath(name).parts:
        return "a '..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract a zip archive into ``dest`` after checking every entry.

    All entries are checked before anything is written: an absolute path, a drive
    letter, a ``..`` component or a symbolic link rejects the whole archive.

    Returns:
        The extracted files (not folders), in archive order.

    Raises:
        UnsafeArchiveError: an entry would be written outside ``dest`` (nothing is written).
        DownloadError: ``archive`` is not a readable zip file (a wrong or broken download).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                reason = _unsafe_reason(info)
                if reason:
                    raise UnsafeArchiveError(
                        f"{str(archive)!r}: entry {info.filename!r} has {reason}; refusing to "
                        "extract this archive (nothing was written)."
                    )
            dest.mkdir(parents=True, exist_ok=True)
            out: list[Path] = []
            for info in infos:
                zf.extract(info, dest)
                if not info.is_dir():
                    out.append(dest / info.filename.replace("\\", "/"))
            return out
    except zipfile.BadZipFile as exc:
        raise DownloadError(
            f"{str(archive)!r} is not a valid zip archive ({exc}); the download is broken or "
            "the URL does not point at a zip file."
        ) from exc


# ---- ICT-FaceKit ---------------------------------------------------------------------
def _find_upstream_root(folder: Path) -> Path:
    """The folder holding ``FaceXModel/``: ``folder`` itself or its single subfolder."""
    if (folder / _MODEL_DIR).is_dir():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if len(subdirs) == 1 and (subdirs[0] / _MODEL_DIR).is_dir():
        return subdirs[0]
    raise DataSourceError(
        f"{str(folder)!r} is not an extracted ICT-FaceKit tree: no {_MODEL_DIR}/ folder in it "
        "or in its single top folder."
    )


def convert_ict_checkout(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    obj_sha256: dict[str, str] | None = None,
    commit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Pack an extracted upstream ICT-FaceKit tree into the folder :class:`ICTSource` reads.

    Args:
        folder: the extracted tree: ``ICT-FaceKit-<commit>/`` (with ``FaceXModel/*.obj``,
            ``FaceXModel/vertex_indices.json``, ``LICENSE``) or the folder holding it.
        out: the packed folder to write (atomically): ``generic_neutral_mesh.obj``,
            ``shapes.npz`` (float32, centimetres as upstream), ``vertex_indices.json``,
            ``LICENSE``, ``manifest.json``.
        obj_sha256: ``'FaceXModel/<name>.obj'`` -> sha256 (default: the packaged table).
            Every listed OBJ must exist and match; every OBJ packed must be listed.
        commit: upstream commit written to the manifest (default: parsed from the
            ``ICT-FaceKit-<commit>`` folder name, else ``"unknown"``).
        overwrite: replace an existing non-empty ``out``.

    Returns:
        ``out`` as a Path.

    Raises:
        DataSourceError: a listed or needed file is missing, or a needed OBJ is not in
            ``obj_sha256`` (it could not be verified).
        ChecksumMismatchError: an OBJ does not have its recorded sha256.
        TopologyMismatchError: a shape OBJ has another vertex count than the neutral mesh.
        OutputPathError: ``out`` exists (without ``overwrite``) or cannot be written.
    """
    root = _find_upstream_root(Path(folder))
    table = dict(upstream_table()["obj_sha256"] if obj_sha256 is None else obj_sha256)
    for rel, expected in sorted(table.items()):
        path = root / rel
        if not path.is_file():
            raise DataSourceError(f"{str(path)!r} is missing from the ICT-FaceKit tree ({rel}).")
        got = sha256_file(path)
        if got != expected.lower():
            raise ChecksumMismatchError(
                f"{rel}: sha256 mismatch, expected {expected.lower()}, got {got}. The archive is "
                "corrupt or not of the expected commit; retry the download."
            )

    model = root / _MODEL_DIR
    if not (model / "vertex_indices.json").is_file():
        raise DataSourceError(f"{str(model / 'vertex_indices.json')!r} is missing from the ICT-FaceKit tree.")
    with open(model / "vertex_indices.json", encoding="utf-8") as f:
        indices = json.load(f)
    identity_files = sorted(p.name for p in model.iterdir() if _IDENTITY_RE.fullmatch(p.name))
    expected_ids = [f"identity{i:03d}.obj" for i in range(len(identity_files))]
    if identity_files != expected_ids:
        raise DataSourceError(
            f"{str(model)!r}: identity OBJs are not numbered 000..{len(identity_files) - 1:03d} "
            f"without gaps (found {identity_files[:3]}...)."
        )
    expression_names = [str(n) for n in indices.get("expressions", [])]
    needed = ["generic_neutral_mesh.obj", *identity_files, *(f"{n}.obj" for n in expression_names)]
    for name in needed:
        rel = f"{_MODEL_DIR}/{name}"
        if rel not in table:
            raise DataSourceError(
                f"{rel} has no recorded sha256, so it cannot be verified; pass an obj_sha256 "
                "table that covers every OBJ of the model."
            )  # every listed file exists (checked above)

    def load(name: str, n_vertices: int) -> np.ndarray:
        v = read_obj_vertices(model / name)
        if len(v) != n_vertices:
            raise TopologyMismatchError(
                f"{_MODEL_DIR}/{name} has {len(v)} vertices, the neutral mesh {n_vertices}."
            )
        return v

    neutral = read_obj_vertices(model / "generic_neutral_mesh.obj")
    n = len(neutral)
    identity = np.stack([load(f, n) for f in identity_files]) if identity_files else np.zeros((0, n, 3), np.float32)
    expression = (
        np.stack([load(f"{e}.obj", n) for e in expression_names])
        if expression_names
        else np.zeros((0, n, 3), np.float32)
    )

    if commit is None:
        m = re.fullmatch(r"ICT-FaceKit-([0-9a-fA-F]{7,40})", root.name)
        commit = m.group(1) if m else "unknown"
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copyfile(model / "generic_neutral_mesh.obj", tmp / "generic_neutral_mesh.obj")
        shutil.copyfile(model / "vertex_indices.json", tmp / "vertex_indices.json")
        if (root / "LICENSE").is_file():
            shutil.copyfile(root / "LICENSE", tmp / "LICENSE")
        np.savez_compressed(
            tmp / "shapes.npz",
            generic_neutral=neutral.astype(np.float32),
            identity_shapes=identity.astype(np.float32),
            expression_shapes=expression.astype(np.float32),
            identity_names=np.array([f[:-4] for f in identity_files], dtype=str),
            expression_names=np.array(expression_names, dtype=str),
        )
        manifest = {
            "source": "ICT-FaceKit (USC Institute for Creative Technologies), MIT license",
            "upstream_repository": ICT_REPOSITORY,
            "upstream_commit": commit,
            "units": "centimetres (as upstream)",
            "vertex_count": n,
            "arrays": {
                "generic_neutral": list(neutral.shape),
                "identity_shapes": list(identity.shape),
                "expression_shapes": list(expression.shape),
            },
            "sha256_of_upstream_obj_files": dict(sorted(table.items())),
            "sha256_shapes_npz": sha256_file(tmp / "shapes.npz"),
        }
        with open(tmp / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
    return Path(out)


def _is_packed(path: Path, commit: str) -> bool:
    """True when ``path`` holds the files ICTSource needs (of ``commit``, if it says)."""
    if not all((path / f).is_file() for f in REQUIRED_FILES):
        return False
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            with open(manifest, encoding="utf-8") as f:
                return json.load(f).get("upstream_commit", commit) == commit
        except (OSError, ValueError):
            return False
    return True


def download_ict(
    cache_dir: str | os.PathLike | None = None,
    *,
    commit: str = ICT_COMMIT,
    url: str | None = None,
    archive_sha256: str | None = None,
    obj_sha256: dict[str, str] | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Download ICT-FaceKit at ``commit`` and pack it; return the packed folder.

    The folder is :func:`default_ict_dir` when ``cache_dir`` is None (for another commit:
    ``$FACEMODEL_CACHE/ict-facekit/<commit>``), else ``cache_dir/ict-facekit/<commit>``.
    If it already holds a packed folder (of that commit) the network is not used unless
    ``force``. Temporary files live beside it and are removed, also on failure.

    Args:
        cache_dir: cache root (see above).
        commit: upstream commit (default: the pinned :data:`ICT_COMMIT`).
        url: archive URL (default: the GitHub archive of ``commit``).
        archive_sha256: sha256 of the archive, if known (upstream does not publish one).
        obj_sha256: per-OBJ sha256 table (default: the packaged table, which is only
            valid for the pinned commit).
        progress: show a download progress bar.
        force: download and repack even if the folder exists.

    Raises:
        DownloadError: the download failed or was truncated.
        ChecksumMismatchError: the archive or an OBJ has the wrong sha256.
        UnsafeArchiveError: the archive has entries outside its folder.
        DataSourceError: the archive lacks a file, or no OBJ table applies to ``commit``.
        OutputPathError: the cache folder cannot be written, or the target folder holds
            something else (without ``force``).
    """
    table = upstream_table()
    if obj_sha256 is None:
        if commit != table["commit"]:
            raise DataSourceError(
                f"the packaged checksum table covers commit {table['commit']}, not {commit}; "
                "pass obj_sha256 for that commit."
            )
        obj_sha256 = table["obj_sha256"]
    if cache_dir is not None:
        target = Path(cache_dir).expanduser() / "ict-facekit" / commit
    elif commit == ICT_COMMIT:
        target = default_ict_dir()
    else:
        base = Path(os.environ.get("FACEMODEL_CACHE", Path.home() / ".cache" / "facemodel"))
        target = base.expanduser() / "ict-facekit" / commit
    if not force and _is_packed(target, commit):
        return target
    url = url or table["archive_url_template"].format(commit=commit)

    check_writable_parent(target)
    if not force and target.is_dir() and any(target.iterdir()):
        raise OutputPathError(
            f"{str(target)!r} exists but is not a packed ICT-FaceKit folder of commit {commit}; "
            "remove it or pass force=True to replace it."
        )
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.download.", dir=target.parent))
    try:
        archive = download_file(url, work / f"ICT-FaceKit-{commit[:12]}.zip", expected_sha256=archive_sha256, progress=progress)
        safe_extract_zip(archive, work / "src")
        archive.unlink()
        return convert_ict_checkout(work / "src", target, obj_sha256=obj_sha256, commit=commit, overwrite=force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
