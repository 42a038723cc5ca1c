"""The tree's static checks: style, types and the package layers, as a reviewer runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy", "."],
        # Layers point down (pyproject.toml [tool.importlinter]): core imports nothing of
        # ours, the shell sits on top, nothing below imports anything above.
        ["lint-imports"],
    ],
    ids=lambda c: c[0] if c[0] != "ruff" else f"ruff-{c[1]}",
)
def test_the_tree_passes(command: list[str]) -> None:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
