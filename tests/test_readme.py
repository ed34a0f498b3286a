"""Every Python and shell block of README.md runs as written.

Each fenced ``python`` / ``bash`` block runs on its own in a fresh folder that looks like a
checkout next to the ICT data (``examples/``, ``configs/`` ... linked in, ``../shared/data/ict-facekit``
pointing at the test ICT folder, ``~/.cache/facemodel/ict4d`` at the small test dataset), so a
block must create every file of "yours" it names (the README's blocks do, marked "stands in
for your ..."). An HTML comment right above a block changes how it is run:

- ``<!-- readme-test: skip (reason) -->``: not run (installs, the test suite itself, servers,
  GPU or network jobs); the reason is required.
- ``<!-- readme-test: slow (reason); run: COMMAND -->``: too long for CI (training, full data
  build, evaluation); ``COMMAND``, the same program with tiny arguments, runs instead. It must
  start with the block's own first command.
- ``<!-- readme-test: creates PATH ... -->``: the block runs and must leave these paths.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LANGUAGES = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
LINKED = ("examples", "configs", "scripts", "benchmarks", "docs")
DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(?P<body>.*?)\s*-->", re.S)


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    directive: str | None = None
    skip: str | None = None  # reason
    slow: str | None = None  # reason
    run: str | None = None  # substitute command of a slow block
    creates: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        first = next((x for x in self.code.splitlines() if x.strip() and not x.startswith("#")), "")
        return f"L{self.line}-{self.language}-{first[:40]}"


def _parse_directive(block: Block) -> None:
    body = block.directive
    if body is None:
        return
    if m := re.fullmatch(r"skip\s*\((?P<reason>.*)\)", body, re.S):
        block.skip = m["reason"].strip()
    elif m := re.fullmatch(r"slow\s*\((?P<reason>.*?)\)\s*;\s*run:\s*(?P<run>.+)", body, re.S):
        block.slow, block.run = m["reason"].strip(), m["run"].strip()
    elif m := re.fullmatch(r"creates\s+(?P<paths>.+)", body, re.S):
        block.creates = m["paths"].split()
    else:
        raise AssertionError(f"README.md:{block.line}: unknown readme-test directive {body!r}")


def readme_blocks(text: str | None = None) -> list[Block]:
    """The README's fenced blocks in a language this test runs, with their directives."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if lang in LANGUAGES:
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            d = DIRECTIVE.fullmatch(lines[k].strip()) if k >= 0 else None
            block = Block(start + 1, LANGUAGES[lang], "\n".join(lines[start + 1 : j]) + "\n", d and d["body"])
            _parse_directive(block)
            blocks.append(block)
        i = j + 1
    return blocks


BLOCKS = readme_blocks()


def test_the_readme_has_runnable_blocks_and_every_exception_says_why():
    assert len(BLOCKS) >= 10
    ran = [b for b in BLOCKS if b.skip is None]
    assert len(ran) >= len(BLOCKS) // 2, "most README blocks must run as written"
    for b in BLOCKS:
        assert b.skip is None or len(b.skip) >= 10, f"README.md:{b.line}: a skip needs a reason"
        assert b.slow is None or len(b.slow) >= 10, f"README.md:{b.line}: a slow block needs a reason"
        if b.run is not None:
            first = next(x for x in b.code.splitlines() if x.strip()).split()[0]
            assert b.run.split()[0] == first, f"README.md:{b.line}: the tiny run must use the block's {first!r}"


def test_directives_are_parsed_strictly():
    text = "<!-- readme-test: skip () -->\n```bash\nls\n```\n<!-- readme-test: slow (long); run: ls -a -->\n```sh\nls\n```\n"
    skip, slow = readme_blocks(text)
    assert skip.skip == "" and slow.slow == "long" and slow.run == "ls -a"
    with pytest.raises(AssertionError, match="unknown readme-test directive"):
        readme_blocks("<!-- readme-test: maybe -->\n```python\npass\n```\n")


@pytest.fixture(scope="module")
def sandbox_env(ict_dir, small_dataset, tmp_path_factory):
    """A PATH with ``python`` and a ``facemodel`` that both run this checkout's code."""
    bin_dir = tmp_path_factory.mktemp("readme-bin")
    shim = bin_dir / "facemodel"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m facemodel "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would leave the venv
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")  # fmt: skip
    return env, Path(ict_dir), Path(small_dataset)


def _sandbox(tmp_path: Path, ict_dir: Path, dataset: Path) -> tuple[Path, Path]:
    work, home = tmp_path / "checkout", tmp_path / "home"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "ict-facekit").symlink_to(ict_dir)
    (home / ".cache" / "facemodel").mkdir(parents=True)
    (home / ".cache" / "facemodel" / "ict4d").symlink_to(dataset)
    return work, home


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.skip is None], ids=lambda b: b.id)
def test_readme_block_runs(block, sandbox_env, tmp_path):
    env, ict_dir, dataset = sandbox_env
    work, home = _sandbox(tmp_path, ict_dir, dataset)
    env = {**env, "HOME": str(home)}
    code = block.code if block.run is None else block.run + "\n"
    language = block.language if block.run is None else "bash"
    script = work / ("readme_block.py" if language == "python" else "readme_block.sh")
    script.write_text(code)
    argv = [sys.executable, script.name] if language == "python" else ["bash", "-euo", "pipefail", script.name]
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"README.md:{block.line} failed ({proc.returncode}):\n{code}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")  # fmt: skip
    for path in block.creates:
        assert (work / path).exists(), f"README.md:{block.line}: {path} was not written"
