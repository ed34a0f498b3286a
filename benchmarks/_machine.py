"""Shared helpers of the benchmark scripts: the CPU's name and the weights' version for the figures'
headers, and the default dataset folder."""

from __future__ import annotations

import platform
from pathlib import Path


#: the ICT 4D build of the release recipe (configs/release.yaml), the scripts' default ``--data``
DEFAULT_DATA = str(Path.home() / ".cache" / "facemodel" / "ict4d-id1000")


def cpu_name() -> str:
    """``model name`` from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def weights_version(folder: str | Path) -> str:
    """The released weights' version of a ``save_pretrained`` folder, from the first ``**Version X**``
    of its model card (README.md), with the first 12 hex digits of model.safetensors' SHA-256
    (``"0.5.0 (sha256 3f1c...)"``; ``"?"`` parts where the card or the file is missing)."""
    import hashlib
    import re

    folder = Path(folder).expanduser()
    version = "?"
    try:
        hit = re.search(r"\*\*Version ([0-9][^*\s]*)\*\*", (folder / "README.md").read_text())
        version = hit.group(1) if hit else "?"
    except OSError:
        pass
    try:
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "?"
    return f"{version} (sha256 {digest})"
