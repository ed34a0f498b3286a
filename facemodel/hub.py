"""Where a :class:`~facemodel.model.FaceModel` comes from and where it goes.

Three sources are understood by :func:`resolve_pretrained` (and so by
``FaceModel.from_pretrained``):

* nothing (``None``): the released weights installed with the package, in the
  ``facemodel.weights`` package (the repository's top-level ``weights/`` folder). No network.
* a local folder holding ``config.json`` + ``model.safetensors`` (written by ``save_pretrained``
  or ``Trainer.export``).
* a Hugging Face Hub model repository id, ``"org/name"``, downloaded with ``huggingface_hub``
  into its cache (``cache_dir``, default ``HF_HUB_CACHE``). Only ``config.json``,
  ``model.safetensors`` and ``README.md`` are fetched. ``local_files_only=True`` or
  ``HF_HUB_OFFLINE=1`` use the cache only; ``HF_ENDPOINT`` selects another Hub (a mirror).

:func:`push_to_hub` uploads such a folder to a Hub repository.

Every failure is raised as a :class:`~facemodel.errors.FaceModelError` subclass whose message
names the repository / revision and says what to do; the ``huggingface_hub`` error is chained
as ``__cause__``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from .errors import (
    ArgumentTypeError,
    DownloadError,
    FaceModelError,
    HubUploadError,
    InvalidRepoIdError,
    WeightsFormatError,
    WeightsNotFoundError,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "HubUploadError",
    "InvalidRepoIdError",
    "MODEL_FILES",
    "README_NAME",
    "is_repo_id",
    "packaged_weights_dir",
    "push_to_hub",
    "resolve_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
README_NAME = "README.md"
#: Files of a model folder; the first two are required, the model card is optional.
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, README_NAME)
_REQUIRED = (CONFIG_NAME, WEIGHTS_NAME)

# Hub repo ids: "namespace/name", letters, digits, "_", "-", "." (no "--" / ".."), each part
# starting and ending with a letter, digit or "_", at most 96 characters, not ending in ".git".
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID_RE = re.compile(rf"{_PART}/{_PART}")


# ---- helpers -------------------------------------------------------------------------------
def _version() -> str:
    from . import __version__

    return __version__


def is_repo_id(value: object) -> bool:
    """True if ``value`` is a string shaped like a Hub model repo id, ``"org/name"``.

    Only the shape is checked (the same rules as ``huggingface_hub.utils.validate_repo_id``,
    with the namespace required); whether the repository exists is not.
    """
    if not isinstance(value, str) or len(value) > 96 or not _REPO_ID_RE.fullmatch(value):
        return False
    if "--" in value or ".." in value or value.endswith(".git"):
        return False
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return True
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _missing_files(folder: Path) -> list[str]:
    return [name for name in _REQUIRED if not (folder / name).is_file()]


def _check_local_folder(folder: Path, shown: str) -> Path:
    if not folder.is_dir():
        raise WeightsNotFoundError(
            f"{shown!r} is a file, not a folder: pass the folder that holds {CONFIG_NAME} and "
            f"{WEIGHTS_NAME} (written by save_pretrained or Trainer.export)"
        )
    missing = _missing_files(folder)
    if missing:
        raise WeightsNotFoundError(
            f"{shown!r} does not hold a facemodel: {' and '.join(missing)} missing (a model folder has "
            f"{CONFIG_NAME} + {WEIGHTS_NAME}); pass a folder written by save_pretrained or Trainer.export"
        )
    return folder


def _hub_offline() -> bool:
    from huggingface_hub import constants

    fn = getattr(constants, "is_offline_mode", None)
    return bool(fn() if callable(fn) else getattr(constants, "HF_HUB_OFFLINE", False))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection / protocol errors of the HTTP client huggingface_hub uses (it changed across versions)."""
    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        errors.append(requests.RequestException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


# ---- packaged weights ----------------------------------------------------------------------
def packaged_weights_dir() -> Path:
    """Folder of the released weights installed with this version of facemodel.

    In an installed wheel this is the ``facemodel/weights`` package folder (the repository's
    top-level ``weights/`` mapped by ``[tool.setuptools] package-dir``); in a source checkout
    or an editable install made before that mapping, the checkout's ``weights/`` folder.
    The folder may hold only the README (no model released yet): check for the files.
    """
    try:
        spec = importlib.util.find_spec("facemodel.weights")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    here = Path(__file__).resolve().parent
    checkout = here.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    return here / "weights"


# ---- resolve -------------------------------------------------------------------------------
def resolve_pretrained(
    name_or_path: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Local folder holding ``config.json`` and ``model.safetensors`` for ``name_or_path``.

    Args:
        name_or_path: ``None`` for the released weights installed with the package; an
            existing local folder; or a Hugging Face Hub model repo id ``"org/name"``. A
            string is looked up as a local path first; a ``os.PathLike`` is always local.
        revision: Hub branch, tag or commit sha (default: the repo's ``main``). Ignored for
            local folders and the packaged weights.
        cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
        local_files_only: never touch the network; use the cache only (as ``HF_HUB_OFFLINE=1``).
        token: Hub token for private or gated repos (default: the stored login / ``HF_TOKEN``).

    Returns:
        The folder (for a Hub repo, the snapshot folder inside the cache).

    Raises:
        WeightsNotFoundError: no released weights are installed (``None``); the folder lacks a
            file; the repo, revision or files do not exist on the Hub, need a token, or are not
            cached while offline; or ``name_or_path`` is neither a folder nor a repo id.
        DownloadError: the transfer itself failed (connection dropped, truncated file, disk).

    Example:
        >>> folder = resolve_pretrained("my-org/facemodel-ict", revision="v0.1.0")  # doctest: +SKIP
        >>> FaceModel.from_pretrained(folder)  # doctest: +SKIP
    """
    if name_or_path is None:
        folder = packaged_weights_dir()
        missing = _missing_files(folder)
        if missing:
            raise WeightsNotFoundError(
                f"no released weights are installed with facemodel {_version()} ({folder} has no "
                f"{' and '.join(missing)}). Pass a local folder written by save_pretrained / Trainer.export, or a Hugging Face "
                "Hub repo id 'org/name', to FaceModel.from_pretrained"
            )
        return folder

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ArgumentTypeError(f"name_or_path must be a str, a path or None, not {type(name_or_path).__name__}")
    shown = os.fspath(name_or_path)
    if not isinstance(shown, str) or "\x00" in shown:
        raise WeightsNotFoundError(f"name_or_path {shown!r} is not a usable folder name or repo id")
    try:
        path = Path(shown).expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        raise WeightsNotFoundError(f"cannot expand the home folder in {shown!r}; give an absolute path") from None
    if path.exists():
        return _check_local_folder(path.absolute(), shown)
    if isinstance(name_or_path, str) and is_repo_id(name_or_path):
        return _download(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
    raise WeightsNotFoundError(
        f"{shown!r} is neither an existing local folder nor a Hugging Face Hub repo id: pass a folder "
        f"holding {CONFIG_NAME} + {WEIGHTS_NAME} (written by save_pretrained), a repo id such as "
        "'org/name', or nothing for the released weights"
    )


def _download(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
    token: str | bool | None,
) -> Path:
    """snapshot_download of the model files, with huggingface_hub errors mapped to ours."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        DisabledRepoError,
        GatedRepoError,
        HFValidationError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    what = f"{repo_id!r} (revision {rev!r})"
    offline = local_files_only or _hub_offline()
    where = f"the cache {str(cache_dir)!r}" if cache_dir is not None else "the Hugging Face cache"
    try:
        folder = snapshot_download(
            repo_id,
            repo_type="model",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=list(MODEL_FILES),
            library_name="facemodel",
            library_version=_version(),
        )
    except GatedRepoError as exc:
        raise WeightsNotFoundError(
            f"the Hugging Face Hub repo {repo_id!r} is gated: accept its conditions on its Hub page, then "
            "log in with `hf auth login` (or pass token=...)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise WeightsNotFoundError(
            f"{repo_id!r} is not a local folder, and the Hugging Face Hub ({_hub_endpoint()}) has no model "
            "repo with that id that you can access: check the id (and the path, if you meant a folder); "
            "for a private repo log in with `hf auth login` or pass token=..."
        ) from exc
    except RevisionNotFoundError as exc:
        raise WeightsNotFoundError(
            f"the Hugging Face Hub repo {repo_id!r} has no revision {rev!r}: check the branch, tag or commit "
            "name, or omit revision for the default branch"
        ) from exc
    except DisabledRepoError as exc:
        raise WeightsNotFoundError(f"the Hugging Face Hub repo {repo_id!r} is disabled: {exc}") from exc
    except LocalEntryNotFoundError as exc:  # includes IncompleteSnapshotError
        if offline:
            how = (
                "drop local_files_only=True"
                if local_files_only
                else "unset HF_HUB_OFFLINE (offline mode is on)"
            )
            raise WeightsNotFoundError(
                f"{what} is not in {where} and network access is off: {how} and connect to the internet "
                "to download it once, or pass cache_dir= where it was downloaded before"
            ) from exc
        raise WeightsNotFoundError(
            f"could not reach the Hugging Face Hub ({_hub_endpoint()}) to download {what}, and it is not in "
            f"{where}: check your internet connection (and HF_ENDPOINT / proxy settings) and retry"
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightsNotFoundError(
                f"the Hugging Face Hub refused access to {what} (HTTP {status}): log in with "
                "`hf auth login` or pass a token that can read this repo"
            ) from exc
        raise DownloadError(
            f"downloading {what} from the Hugging Face Hub failed (HTTP {status}): {exc}; retry later"
        ) from exc
    except HFValidationError as exc:
        raise WeightsNotFoundError(f"{repo_id!r} / revision {rev!r} is not a valid Hub reference: {exc}") from exc
    except OfflineModeIsEnabled as exc:
        raise WeightsNotFoundError(
            f"{what} is not in {where} and offline mode is on: unset HF_HUB_OFFLINE to download it"
        ) from exc
    except (*_transport_errors(), OSError) as exc:
        raise DownloadError(
            f"downloading {what} from the Hugging Face Hub ({_hub_endpoint()}) failed: {exc}; check your "
            "connection and disk space, then retry"
        ) from exc

    folder = Path(folder)
    missing = _missing_files(folder)
    if missing:
        raise WeightsNotFoundError(
            f"the Hugging Face Hub repo {what} is not a facemodel repo: {' and '.join(missing)} missing "
            f"(a facemodel repo holds {CONFIG_NAME} + {WEIGHTS_NAME}, uploaded by push_to_hub)"
        )
    return folder


# ---- upload --------------------------------------------------------------------------------
def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload facemodel",
    create_repo: bool = True,
) -> str:
    """Upload a model folder (``config.json``, ``model.safetensors``, ``README.md`` if present).

    Other files in ``folder`` are not uploaded; files already in the repo are kept (and
    overwritten when uploaded again).

    Args:
        folder: a folder written by ``save_pretrained`` / ``Trainer.export``.
        repo_id: the Hub model repo, ``"org/name"``.
        token: a token with write access (default: the stored login / ``HF_TOKEN``).
        private: visibility when the repo is created (default: the Hub's default, public).
        revision: branch to commit to (created from ``main`` if missing); default ``main``.
        commit_message: message of the commit.
        create_repo: create the repo if it does not exist (no-op when it does).

    Returns:
        The URL of the commit.

    Raises:
        WeightsNotFoundError: ``folder`` lacks ``config.json`` or ``model.safetensors``.
        InvalidRepoIdError: ``repo_id`` is not ``"org/name"``.
        WeightsFormatError: the Hub rejected the metadata block of ``README.md``.
        HubUploadError: not logged in / no write access, repo missing, network or Hub failure.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    shown = os.fspath(folder)
    folder = Path(shown).expanduser()
    if not folder.exists():
        raise WeightsNotFoundError(f"{shown!r} does not exist: pass a folder written by save_pretrained")
    _check_local_folder(folder, shown)
    if not is_repo_id(repo_id):
        raise InvalidRepoIdError(
            f"{repo_id!r} is not a Hugging Face Hub repo id: expected 'org/name' (letters, digits, '-', '_', '.')"
        )
    files = [name for name in MODEL_FILES if (folder / name).is_file()]
    api = HfApi(token=token, library_name="facemodel", library_version=_version())
    target = f"{repo_id!r}" + (f" (branch {revision!r})" if revision else "")
    try:
        if create_repo:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main" and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            allow_patterns=files,
        )
    except RepositoryNotFoundError as exc:
        raise HubUploadError(
            f"cannot upload to {target}: the repo does not exist or your token cannot see it; pass "
            "create_repo=True, check the id, and log in with `hf auth login` (a token with write access)"
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubUploadError(
                f"the Hugging Face Hub refused the upload to {target} (HTTP {status}): log in with "
                "`hf auth login` using a token with write access to this repo, or pass token=..."
            ) from exc
        raise HubUploadError(f"uploading to {target} failed (HTTP {status}): {exc}") from exc
    except OfflineModeIsEnabled as exc:
        raise HubUploadError(f"cannot upload to {target}: offline mode is on; unset HF_HUB_OFFLINE") from exc
    except _transport_errors() as exc:
        raise HubUploadError(
            f"could not reach the Hugging Face Hub ({_hub_endpoint()}) to upload to {target}: {exc}; check "
            "your connection and retry"
        ) from exc
    except ValueError as exc:
        if "README" in str(exc):
            raise WeightsFormatError(f"the Hub rejected {README_NAME} of {shown!r}: {exc}") from exc
        raise
    return str(getattr(info, "commit_url", info))
