"""A real, throwaway PostgreSQL server for the test session.

Wire it in from ``tests/conftest.py`` with::

    from tests.pg import postgres_url  # noqa: F401

``postgres_url`` is a session-scoped fixture: the URL of an empty database on a server
started from Debian's binaries (``/usr/lib/postgresql/<version>/bin``) in a temporary
directory, stopped and removed when the session ends. When ``SPINNER_TEST_DATABASE_URL``
is set, that server is used instead and nothing is started. Missing binaries fail the
tests that need Postgres with a message saying how to install them: a store that claims
Postgres support is never silently left untested.

Tests that must not see each other's rows take a fresh schema with :func:`fresh_schema`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

ENV_URL = "SPINNER_TEST_DATABASE_URL"
DATABASE = "spinner_test"
OS_USER = "postgres"

# Durability is worthless for a server that lives one test session; these make it fast.
_SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200 -c shared_buffers=128MB"
)


class PostgresUnavailableError(RuntimeError):
    """The PostgreSQL server binaries are missing or the server would not start."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first).

    Raises:
        PostgresUnavailableError: no PostgreSQL server binaries are installed.
    """
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        bindir = Path(candidate)
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    # Other layouts (Homebrew, source builds) put them on PATH.
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresUnavailableError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
        "or on PATH: install them with `apt-get install -y postgresql`, or point "
        f"{ENV_URL} at a running server (postgresql://user@host:port/db)"
    )


@contextmanager
def running_postgres() -> Iterator[str]:
    """Start a throwaway server and yield the URL of an empty database on it.

    Yields ``$SPINNER_TEST_DATABASE_URL`` untouched when it is set.

    Raises:
        PostgresUnavailableError: binaries missing, or initdb / the server failed.
    """
    external = os.environ.get(ENV_URL)
    if external:
        yield external
        return
    bindir = find_bindir()
    as_root = os.geteuid() == 0
    # Postgres refuses to run as root: run it as the `postgres` OS user, in a
    # directory that user owns (the socket lives there too, not in /run/postgresql).
    runner = ["runuser", "-u", OS_USER, "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="spinner-pg-"))
    if as_root:
        try:
            shutil.chown(base, user=OS_USER, group=OS_USER)
        except LookupError as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise PostgresUnavailableError(
                f"running as root and there is no `{OS_USER}` OS user to run PostgreSQL "
                "as: install the `postgresql` package (it creates the user)"
            ) from exc
    data = base / "data"
    started = False
    try:
        _run(
            [
                *runner,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                OS_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=base,
        )
        port = _free_port()
        _run(
            [
                *runner,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} "
                f"-c unix_socket_directories={base} {_SERVER_OPTIONS}",
                "start",
            ],
            cwd=base,
            log=base / "server.log",
        )
        started = True
        server = f"postgresql://{OS_USER}@127.0.0.1:{port}"
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            # A linguistic collation, as production databases mostly have: code that
            # silently relies on byte order (SQLite's) fails here, not in production.
            conn.execute(
                f"CREATE DATABASE {DATABASE} TEMPLATE template0 ENCODING 'UTF8' "
                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
            )
        yield f"{server}/{DATABASE}"
    finally:
        if started:
            # `immediate` skips the shutdown checkpoint: the data is thrown away next.
            subprocess.run(
                [*runner, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                cwd=base,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """Yield ``url`` bound to a new empty schema (its ``search_path``); drop it after.

    A schema per test isolates tests at a fraction of the cost of a database per test,
    and is safe on a shared server given by ``SPINNER_TEST_DATABASE_URL``.
    """
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections put ``schema`` first on the search path."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a database on a real PostgreSQL server, for the whole session."""
    with running_postgres() as url:
        yield url


# --- helpers -----------------------------------------------------------------------------


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _free_port() -> int:
    # The port is free when asked; another process could take it before the server
    # binds it, but on a test machine that race is rare and fails loudly (pg_ctl start).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(cmd: list[str], *, cwd: Path, log: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stdout + proc.stderr
        if log is not None and log.exists():
            detail += log.read_text(errors="replace")
        raise PostgresUnavailableError(
            f"{' '.join(cmd)} failed with status {proc.returncode}:\n{detail.strip()}"
        )
