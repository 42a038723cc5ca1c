"""docker-compose.yml is checked by a real compose implementation, and says what it should.

Debian's ``docker-compose`` (installed by ``./run test`` when missing) validates a file
with ``config -q`` without a Docker daemon: the schema, types, references and YAML.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary is not None, (
        "docker-compose not found: `./run test` installs Debian's docker-compose package "
        "(as root); or `apt-get install docker-compose`"
    )
    return subprocess.run(
        [binary, "-f", "docker-compose.yml", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_compose_file_is_valid() -> None:
    checked = compose("config", "-q", cwd=ROOT)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("services:", "servics:"),  # an unknown top-level key
        ("condition: service_completed_successfully", "condition: service_done"),
        ('- "8000:8000"', '- "eight:8000"'),  # a port that is not one
        ("      retries: 6\n", "      retries: six\n"),
        ('    command: ["spinner-jobs", "api"]', '    command: ["spinner-jobs", "api"'),
        ("services:", "services:"),  # the control: an unchanged copy passes where it lies
    ],
    ids=["unknown-key", "bad-condition", "bad-port", "bad-type", "bad-yaml", "unchanged"],
)
def test_a_broken_compose_file_fails_the_check(tmp_path: Path, old: str, new: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the compose file no longer contains {old!r}; update this test"
    (tmp_path / "docker-compose.yml").write_text(text.replace(old, new, 1))
    (tmp_path / "deploy").mkdir()
    checked = compose("config", "-q", cwd=tmp_path)
    if old == new:
        assert checked.returncode == 0, checked.stderr
        return
    assert checked.returncode != 0, (old, new, checked.stdout)
    assert checked.stderr.strip(), "a refused file should say why"


def test_the_api_runs_as_a_frontend_beside_the_workers() -> None:
    rendered = compose("config", cwd=ROOT)
    assert rendered.returncode == 0, rendered.stderr
    services: dict[str, Any] = yaml.safe_load(rendered.stdout)["services"]
    api, worker = services["api"], services["worker"]
    assert api["command"] == ["spinner-jobs", "api"]
    assert api["environment"]["SPINNER_SERVICE_TYPE"] == "frontend"
    assert api["environment"]["SPINNER_API_HOST"] == "0.0.0.0"
    port = api["environment"]["SPINNER_API_PORT"]
    assert {"published": int(port), "target": int(port)} in [
        {k: p[k] for k in ("published", "target")} for p in api["ports"]
    ]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in probe
    assert worker["command"] == ["spinner-jobs", "worker"]
    assert worker["environment"]["SPINNER_SERVICE_TYPE"] == "worker"
    for service in (api, worker):  # both reach the same Temporal and the same store
        assert service["environment"]["SPINNER_TEMPORAL_ADDRESS"] == "temporal:7233"
        assert service["environment"]["SPINNER_DATABASE_URL"].startswith("postgresql://")
