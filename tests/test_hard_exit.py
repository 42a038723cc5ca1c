"""The hard-exit plugin keeps pytest's real exit status (a failing test still fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("body", "status"), [("assert 1 == 2", 1), ("assert 1 == 1", 0)])
def test_exit_status_survives_the_hard_exit(tmp_path: Path, body: str, status: int) -> None:
    (tmp_path / "test_probe.py").write_text(f"def test_probe():\n    {body}\n")
    env = {k: v for k, v in os.environ.items() if k != "SPINNER_NO_HARD_EXIT"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.hard_exit",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            "/dev/null",
            str(tmp_path / "test_probe.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stdout + done.stderr
    assert ("1 failed" if status else "1 passed") in done.stdout
