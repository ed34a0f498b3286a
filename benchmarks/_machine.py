"""Shared helper of the benchmark scripts: the CPU's name for the figures' headers."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """``model name`` from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"
