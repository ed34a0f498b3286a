"""Loading from / pushing to the Hugging Face Hub, against a fake Hub on 127.0.0.1 (no network).

``FakeHub`` implements the few endpoints huggingface_hub uses here:

* download (``snapshot_download``): ``GET /api/models/{repo}/revision/{rev}`` (commit sha),
  ``GET /api/models/{repo}/tree/{sha}`` (file listing), ``HEAD``/``GET
  /{repo}/resolve/{sha}/{file}`` (``X-Repo-Commit``, ``ETag``, ``Content-Length``); errors carry
  the ``X-Error-Code`` header (RepoNotFound, RevisionNotFound, EntryNotFound) the Hub sends.
* upload (``HfApi.create_repo`` / ``create_branch`` / ``upload_folder``): ``POST
  /api/repos/create``, ``/api/models/{repo}/branch/{branch}``, ``/api/validate-yaml``,
  ``/api/models/{repo}/preupload/{rev}`` (every file answered as a "regular" upload, so the
  content travels base64 in the commit) and ``/api/models/{repo}/commit/{rev}`` (ndjson).

huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` once, at import, into
``huggingface_hub.constants``; every code path used here reads ``constants.ENDPOINT``,
``constants.HUGGINGFACE_CO_URL_TEMPLATE`` and ``constants.is_offline_mode()`` at call time, so
the fixture monkeypatches those attributes (in-process, fast, restored after each test) instead
of setting environment variables, which would need a subprocess per call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants

import facemodel.hub as hub_module
from facemodel.errors import FaceModelError
from facemodel.hub import (
    HubUploadError,
    InvalidRepoIdError,
    is_repo_id,
    packaged_weights_dir,
    push_to_hub,
    resolve_pretrained,
)
from facemodel.model import FaceModel, FaceModelConfig, WeightsNotFoundError
from facemodel.networks.config import Factor, GeneratorConfig

REPO = Path(__file__).resolve().parents[1]


# ---- fake Hub ------------------------------------------------------------------------------
def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """In-memory Hub: repos -> refs -> commits -> files. Records every request."""

    def __init__(self) -> None:
        self.refs: dict[str, dict[str, str]] = {}  # repo -> {branch or tag: commit sha}
        self.commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> {sha: {path: bytes}}
        self.messages: dict[str, str] = {}  # sha -> commit message
        self.private: dict[str, bool | None] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.fail_status: int | None = None  # answer every request with this status
        self.bad_tokens = {"Bearer hf_bad"}
        self._lock = threading.Lock()
        self._n = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- state
    def commit(self, repo: str, files: dict[str, bytes], *, ref: str = "main", message: str = "") -> str:
        """Add a commit on branch ``ref`` with ``files`` over its parent's files; return its sha."""
        with self._lock:
            self._n += 1
            repo_commits = self.commits.setdefault(repo, {})
            refs = self.refs.setdefault(repo, {})
            parent = dict(repo_commits.get(refs.get(ref) or refs.get("main", ""), {}))
            parent.update(files)
            sha = hashlib.sha1(f"{repo}/{ref}/{self._n}".encode()).hexdigest()
            repo_commits[sha] = parent
            refs[ref] = sha
            self.messages[sha] = message
            return sha

    def tag(self, repo: str, name: str, sha: str) -> None:
        self.refs[repo][name] = sha

    def files(self, repo: str, rev: str = "main") -> dict[str, bytes]:
        return self.commits[repo][self.refs[repo].get(rev, rev)]

    def resolve(self, repo: str, rev: str) -> str | None:
        if rev in self.refs.get(repo, {}):
            return self.refs[repo][rev]
        return rev if rev in self.commits.get(repo, {}) else None

    def model_requests(self) -> list[tuple[str, str, str | None]]:
        """Requests other than huggingface_hub's best-effort agent-registry lookup."""
        return [r for r in self.requests if r[1] != "/api/agent-harnesses"]


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    api_repo = r"/api/models/(?P<repo>[^/]+/[^/]+)"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        # -- plumbing
        def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None) -> None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str | None = None, message: str = "", extra: dict | None = None) -> None:
            headers = dict(extra or {})
            if code:
                headers["X-Error-Code"] = code
            if message:
                headers["X-Error-Message"] = message
            self._send(status, {"error": message or code or "error"}, headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            url = urlsplit(self.path)
            path = url.path
            hub.requests.append((self.command, path, self.headers.get("authorization")))
            if hub.fail_status is not None:
                return self._error(hub.fail_status, message="fake outage")
            if self.headers.get("authorization") in hub.bad_tokens:
                return self._error(401, message="Invalid credentials in Authorization header")
            for pattern, method, fn in ROUTES:
                m = re.fullmatch(pattern, path)
                if m and method == self.command or (m and method == "GET" and self.command == "HEAD"):
                    return fn(self, **{k: unquote(v) for k, v in m.groupdict().items()})
            return self._error(404, message="no such route in the fake Hub")

        do_GET = do_HEAD = do_POST = _handle

        # -- download endpoints
        def _repo_rev(self, repo: str, rev: str) -> str | None:
            if repo not in hub.refs:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            sha = hub.resolve(repo, rev)
            if sha is None:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return sha

        def model_info(self, repo: str, rev: str | None = None) -> None:
            sha = self._repo_rev(repo, rev or "main")
            if sha is not None:
                files = hub.commits[repo][sha]
                self._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": bool(hub.private.get(repo)),
                                 "siblings": [{"rfilename": f} for f in sorted(files)]})  # fmt: skip

        def tree(self, repo: str, rev: str) -> None:
            sha = self._repo_rev(repo, rev)
            if sha is not None:
                files = hub.commits[repo][sha]
                self._send(200, [{"type": "file", "path": f, "size": len(b), "oid": _git_sha1(b)}
                                 for f, b in sorted(files.items())])  # fmt: skip

        def resolve_file(self, repo: str, rev: str, filename: str) -> None:
            sha = self._repo_rev(repo, rev)
            if sha is None:
                return
            data = hub.commits[repo][sha].get(filename)
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
            self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{_git_sha1(data)}"',
                                   "Content-Type": "application/octet-stream"})  # fmt: skip

        # -- upload endpoints
        def create_repo(self) -> None:
            payload = json.loads(self._body())
            repo = f"{payload['organization']}/{payload['name']}"
            if repo in hub.refs:  # the Hub answers 409 with the url of the existing repo
                return self._send(409, {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo}"})
            hub.private[repo] = {"private": True, "public": False}.get(payload.get("visibility"))
            hub.commit(repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self._send(200, {"url": f"{hub.endpoint}/{repo}", "name": repo, "id": repo})

        def create_branch(self, repo: str, branch: str) -> None:
            self._body()
            if repo not in hub.refs:
                return self._error(404, "RepoNotFound", "Repository not found")
            if branch in hub.refs[repo]:
                return self._error(409, message="Reference already exists")
            hub.refs[repo][branch] = hub.refs[repo]["main"]
            self._send(200, {})

        def validate_yaml(self) -> None:
            self._body()
            self._send(200, {"errors": [], "warnings": []})

        def preupload(self, repo: str, rev: str) -> None:
            payload = json.loads(self._body())
            if self._repo_rev(repo, rev) is not None:
                self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in payload["files"]]})  # fmt: skip

        def commit(self, repo: str, rev: str) -> None:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if self._repo_rev(repo, rev) is None:
                return
            header = next(x["value"] for x in lines if x["key"] == "header")
            if any(x["key"] not in ("header", "file") for x in lines):
                return self._error(400, message="the fake Hub accepts regular files only")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            sha = hub.commit(repo, files, ref=rev, message=header["summary"])
            self._send(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{sha}", "commitOid": sha})

    ROUTES = [
        (api_repo, "GET", Handler.model_info),
        (api_repo + r"/revision/(?P<rev>[^/]+)", "GET", Handler.model_info),
        (api_repo + r"/tree/(?P<rev>[^/]+)", "GET", Handler.tree),
        (r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<filename>.+)", "GET", Handler.resolve_file),
        (r"/api/repos/create", "POST", Handler.create_repo),
        (api_repo + r"/branch/(?P<branch>[^/]+)", "POST", Handler.create_branch),
        (r"/api/validate-yaml", "POST", Handler.validate_yaml),
        (api_repo + r"/preupload/(?P<rev>[^/]+)", "POST", Handler.preupload),
        (api_repo + r"/commit/(?P<rev>[^/]+)", "POST", Handler.commit),
    ]
    return Handler


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub().start()
    monkeypatch.setattr(hf_constants, "ENDPOINT", fake.endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub fetches an agent registry once per process from ENDPOINT; skip it
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}}, raising=False)
    yield fake
    fake.stop()


# ---- a tiny model --------------------------------------------------------------------------
V = 10


def tiny_model(seed: int = 0) -> FaceModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    factors = (Factor(name="identity", code_dim=4, num_labels=3), Factor(name="expression", code_dim=3, num_labels=7))
    config = FaceModelConfig(generator=GeneratorConfig(num_vertices=V, factors=factors, hidden=16),
                             label_names={"identity": ["a", "b", "c"]})  # fmt: skip
    return FaceModel(
        config,
        template=rng.normal(size=(V, 3)) * 50,
        faces=rng.integers(0, V, size=(12, 3)),
        uv=rng.random((V, 2)),
        landmarks=np.arange(5),
        label_codes={"identity": torch.randn(3, 4), "expression": torch.randn(7, 3)},
    ).eval()


def model_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "model"
    tiny_model(0).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlibrary_name: facemodel\n---\n# tiny test face model\n")
    return folder


def same_outputs(a: FaceModel, b: FaceModel) -> None:
    z = torch.randn(4, a.config.generator.code_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(z), b(z), rtol=0, atol=0)
    for f in ("identity", "expression"):
        torch.testing.assert_close(a.label_codes(f), b.label_codes(f), rtol=0, atol=0)


# ---- Hub download --------------------------------------------------------------------------
def test_download_by_repo_id_and_revision_then_offline_from_cache(hub, model_dir, tmp_path, monkeypatch):
    repo = "face-org/tiny-face"
    v1 = hub.commit(repo, {**model_files(model_dir), "extra.bin": b"not a model file"}, message="v1")
    hub.tag(repo, "v1", v1)
    other = tmp_path / "other"
    tiny_model(1).save_pretrained(other)
    hub.commit(repo, model_files(other), message="newer main")  # main moved on: revision must matter
    cache = tmp_path / "cache"

    folder = resolve_pretrained(repo, revision="v1", cache_dir=cache, token="hf_reader")
    assert folder.is_dir() and cache.resolve() in folder.resolve().parents and folder.name == v1
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / "README.md").read_bytes() == (model_dir / "README.md").read_bytes()
    same_outputs(FaceModel.from_pretrained(folder), FaceModel.from_pretrained(model_dir))
    assert not any("extra.bin" in path for _, path, _ in hub.requests)  # only the model files
    assert {auth for _, _, auth in hub.model_requests()} == {"Bearer hf_reader"}

    # main is the other model
    main = resolve_pretrained(repo, cache_dir=cache)
    assert main != folder
    same_outputs(FaceModel.from_pretrained(main), FaceModel.from_pretrained(other))

    # offline, from the pre-filled cache: no request reaches the server
    hub.requests.clear()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert resolve_pretrained(repo, revision="v1", cache_dir=cache) == folder
    assert resolve_pretrained(repo, revision=v1, cache_dir=cache) == folder  # a commit sha works too
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    assert resolve_pretrained(repo, revision="v1", cache_dir=cache, local_files_only=True) == folder
    same_outputs(FaceModel.from_pretrained(folder), FaceModel.from_pretrained(model_dir))
    assert hub.requests == []


def test_unknown_repo_is_weights_not_found(hub, tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"'face-org/nope'.*check the id.*hf auth login") as info:
        resolve_pretrained("face-org/nope", cache_dir=tmp_path / "cache")
    assert isinstance(info.value, FaceModelError) and isinstance(info.value, FileNotFoundError)
    assert info.value.__cause__ is not None  # the huggingface_hub error is chained
    assert hub.model_requests()  # it did ask the (fake) Hub


def test_unknown_revision_is_weights_not_found(hub, model_dir, tmp_path):
    hub.commit("face-org/tiny-face", model_files(model_dir))
    with pytest.raises(WeightsNotFoundError, match=r"'face-org/tiny-face' has no revision 'v9'.*branch, tag or commit"):
        resolve_pretrained("face-org/tiny-face", revision="v9", cache_dir=tmp_path / "cache")


def test_repo_without_model_files(hub, tmp_path):
    hub.commit("face-org/not-a-face", {"config.json": b"{}", "README.md": b"# hello\n"})
    with pytest.raises(WeightsNotFoundError, match=r"not a facemodel repo: model\.safetensors missing"):
        resolve_pretrained("face-org/not-a-face", cache_dir=tmp_path / "cache")


def test_empty_cache_without_network_access(hub, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotFoundError, match=r"'face-org/tiny-face' \(revision 'main'\) is not in .*drop local_files_only"):
        resolve_pretrained("face-org/tiny-face", cache_dir=cache, local_files_only=True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="unset HF_HUB_OFFLINE"):
        resolve_pretrained("face-org/tiny-face", revision="v1", cache_dir=cache)
    assert hub.requests == []


def test_hub_outage_without_cache(hub, tmp_path):
    hub.fail_status = 503
    with pytest.raises(WeightsNotFoundError, match=r"could not reach the Hugging Face Hub .*check your internet connection"):
        resolve_pretrained("face-org/tiny-face", cache_dir=tmp_path / "cache")


# ---- local folders, packaged weights, ids --------------------------------------------------
def test_local_folder(model_dir, hub):
    assert resolve_pretrained(model_dir) == model_dir
    assert resolve_pretrained(str(model_dir)) == model_dir
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"model\.safetensors missing.*save_pretrained"):
        resolve_pretrained(model_dir)
    with pytest.raises(WeightsNotFoundError, match="is a file, not a folder"):
        resolve_pretrained(model_dir / "config.json")
    assert hub.requests == []


def test_local_folder_wins_over_repo_id(tmp_path, monkeypatch, hub):
    monkeypatch.chdir(tmp_path)
    tiny_model().save_pretrained(tmp_path / "face-org" / "tiny-face")
    assert resolve_pretrained("face-org/tiny-face") == tmp_path / "face-org" / "tiny-face"
    # a Path is always local: no Hub lookup for a missing one
    with pytest.raises(WeightsNotFoundError, match="neither an existing local folder nor"):
        resolve_pretrained(Path("face-org/other"))
    assert hub.requests == []


def test_no_argument_without_released_weights(tmp_path, monkeypatch):
    empty = tmp_path / "weights"
    empty.mkdir()
    (empty / "README.md").write_text("# no model yet\n")
    monkeypatch.setattr(hub_module, "packaged_weights_dir", lambda: empty)
    with pytest.raises(WeightsNotFoundError, match=r"no released weights are installed with facemodel .*Hub repo id"):
        resolve_pretrained()


def test_no_argument_with_released_weights(model_dir, monkeypatch):
    monkeypatch.setattr(hub_module, "packaged_weights_dir", lambda: model_dir)
    assert resolve_pretrained() == model_dir


def test_packaged_weights_dir_is_the_weights_folder():
    import facemodel

    folder = packaged_weights_dir()
    assert (folder / "README.md").is_file() and folder.name == "weights"
    if Path(facemodel.__file__).resolve().parents[1] == REPO:  # source checkout or editable install
        assert folder.resolve() == (REPO / "weights").resolve()


@pytest.mark.parametrize("bad", ["not a repo!!", "a/b/c", "org/", "/org/name", "org--x/name", "org/name.git", "-org/name"])
def test_invalid_name_raises(bad, hub):
    assert not is_repo_id(bad)
    with pytest.raises(WeightsNotFoundError, match="neither an existing local folder nor a Hugging Face Hub repo id"):
        resolve_pretrained(bad)
    assert hub.requests == []


@pytest.mark.parametrize("good", ["org/name", "Org-1/face_model.v2", "a/b"])
def test_repo_id_shape(good):
    assert is_repo_id(good)


def test_pyproject_lists_every_package():
    tomllib = pytest.importorskip("tomllib")
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "facemodel").rglob("__init__.py")}
    assert set(tool["packages"]) == found | {"facemodel.weights"}
    assert tool["package-dir"] == {"facemodel.weights": "weights"}
    assert {"*.json", "*.safetensors", "*.md"} <= set(tool["package-data"]["facemodel.weights"])


# ---- push ----------------------------------------------------------------------------------
def test_push_to_hub_round_trip(hub, model_dir, tmp_path):
    (model_dir / "notes.txt").write_text("not uploaded")
    url = push_to_hub(model_dir, "me/tiny-face", token="hf_writer", private=True, commit_message="first model")
    sha = hub.refs["me/tiny-face"]["main"]
    assert url == f"{hub.endpoint}/me/tiny-face/commit/{sha}" and hub.messages[sha] == "first model"
    assert hub.private["me/tiny-face"] is True
    uploaded = hub.files("me/tiny-face")
    assert {k: v for k, v in uploaded.items() if k != ".gitattributes"} == {
        k: v for k, v in model_files(model_dir).items() if k != "notes.txt"
    }
    assert {auth for _, _, auth in hub.model_requests()} == {"Bearer hf_writer"}

    # again into the existing repo, on a new branch, without a model card
    (model_dir / "README.md").unlink()
    url = push_to_hub(model_dir, "me/tiny-face", token="hf_writer", revision="dev")
    assert hub.refs["me/tiny-face"]["dev"] != sha and url.endswith(hub.refs["me/tiny-face"]["dev"])
    assert hub.messages[hub.refs["me/tiny-face"]["dev"]] == "Upload facemodel"

    folder = resolve_pretrained("me/tiny-face", revision="dev", cache_dir=tmp_path / "cache")
    same_outputs(FaceModel.from_pretrained(folder), FaceModel.from_pretrained(model_dir))


def test_push_to_hub_errors(hub, model_dir, tmp_path):
    with pytest.raises(InvalidRepoIdError, match="not a Hugging Face Hub repo id"):
        push_to_hub(model_dir, "not a repo!!")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "nothing", "me/tiny-face")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"model\.safetensors missing"):
        push_to_hub(model_dir, "me/tiny-face")
    assert hub.requests == []
    tiny_model().save_pretrained(model_dir)
    with pytest.raises(HubUploadError, match=r"refused the upload.*HTTP 401.*hf auth login") as info:
        push_to_hub(model_dir, "me/tiny-face", token="hf_bad")
    assert isinstance(info.value, OSError)
    with pytest.raises(HubUploadError, match="create_repo=True"):
        push_to_hub(model_dir, "me/missing", token="hf_writer", create_repo=False)


# ---- FaceModel wiring (active once FaceModel.from_pretrained / push_to_hub use facemodel.hub) --
def _wired(name: str) -> bool:
    import inspect

    fn = getattr(FaceModel, name, None)
    return fn is not None and "revision" in inspect.signature(fn).parameters


@pytest.mark.skipif(not _wired("from_pretrained"), reason="FaceModel.from_pretrained does not take Hub ids yet")
def test_facemodel_from_pretrained_sources(hub, model_dir, tmp_path, monkeypatch):
    hub.commit("face-org/tiny-face", model_files(model_dir))
    cache = tmp_path / "cache"
    reference = FaceModel.from_pretrained(model_dir)
    same_outputs(FaceModel.from_pretrained("face-org/tiny-face", cache_dir=cache), reference)
    hub.requests.clear()
    model = FaceModel.from_pretrained("face-org/tiny-face", cache_dir=cache, local_files_only=True, dtype=torch.float64)
    assert model.template.dtype == torch.float64 and hub.requests == []
    with pytest.raises(WeightsNotFoundError, match="face-org/nope"):
        FaceModel.from_pretrained("face-org/nope", cache_dir=cache)
    monkeypatch.setattr(hub_module, "packaged_weights_dir", lambda: model_dir)
    same_outputs(FaceModel.from_pretrained(), reference)
    monkeypatch.setattr(hub_module, "packaged_weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsNotFoundError, match="released"):
        FaceModel.from_pretrained()


@pytest.mark.skipif(not _wired("push_to_hub"), reason="FaceModel.push_to_hub does not exist yet")
def test_facemodel_push_to_hub(hub, tmp_path):
    model = tiny_model(3)
    url = model.push_to_hub("me/pushed", token="hf_writer", commit_message="from the model")
    sha = hub.refs["me/pushed"]["main"]
    assert url.endswith(sha) and hub.messages[sha] == "from the model"
    assert {"config.json", "model.safetensors"} <= set(hub.files("me/pushed"))
    same_outputs(FaceModel.from_pretrained(resolve_pretrained("me/pushed", cache_dir=tmp_path / "c")), model)
