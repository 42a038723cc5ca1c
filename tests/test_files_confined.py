"""Hostile files table configs: every way out of the root is refused with a clear error."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from enqueuer.settings import Settings
from spinner_jobs.connectors.base import Connector, Page, ReadContext
from spinner_jobs.connectors.files import FilesConnector
from spinner_jobs.core.errors import InvalidTableConfigError
from spinner_jobs.core.models import Table
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import worker_resources


def table(path: str) -> Table:
    return Table(
        id="tbl_f", workbook_id="wb", name="f", connector="files", config=path_config(path)
    )


def path_config(path: str) -> dict[str, Any]:
    return {"path": path, "format": "csv"}


async def read(conn: Connector, path: str) -> list[Page]:
    return [page async for page in conn.pages(table(path), None, None, ReadContext("j"))]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A files root holding ok.csv, beside a secret.csv outside it."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "ok.csv").write_text("id,name\n1,a\n")
    (tmp_path / "root" / "sub").mkdir()
    (tmp_path / "secret.csv").write_text("id,password\n1,hunter2\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "more.csv").write_text("id,password\n2,hunter3\n")
    return tmp_path / "root"


def link(at: Path, to: Path | str) -> str:
    at.symlink_to(to)
    return at.name


OUTSIDE = [
    ("/etc/passwd", "outside the files root"),
    ("../secret.csv", "outside the files root"),
    ("sub/../../secret.csv", "outside the files root"),
    ("{tmp}/secret.csv", "outside the files root"),
    ("~/.bashrc", "'~' is not expanded"),
    ("~root/.bashrc", "'~' is not expanded"),
    ("/proc/self/environ", "outside the files root"),
    ("/dev/zero", "outside the files root"),
    ("ok.csv\x00.txt", "NUL"),
    (".", "a directory"),
    ("sub", "a directory"),
]


@pytest.mark.parametrize(("path", "problem"), OUTSIDE)
async def test_paths_outside_the_root_are_refused(root: Path, path: str, problem: str) -> None:
    conn = FilesConnector(root)
    path = path.format(tmp=root.parent)
    with pytest.raises(InvalidTableConfigError, match=problem):
        conn.validate_config(path_config(path))
    with pytest.raises(InvalidTableConfigError, match=problem) as caught:
        await read(conn, path)
    assert str(caught.value).startswith("table 'tbl_f': file ")
    assert "hunter" not in str(caught.value)


async def test_a_file_inside_the_root_is_read(root: Path) -> None:
    conn = FilesConnector(root)
    for path in ("ok.csv", str(root / "ok.csv"), "sub/../ok.csv", "./ok.csv"):
        conn.validate_config(path_config(path))
        assert [r for p in await read(conn, path) for r, _ in p.records] == ["1"]


@pytest.mark.parametrize(
    "target", ["/etc/passwd", "../secret.csv", "{tmp}/secret.csv", "/proc/self/environ"]
)
async def test_symlinks_that_leave_the_root_are_refused(root: Path, target: str) -> None:
    name = link(root / "innocent.csv", target.format(tmp=root.parent))
    with pytest.raises(InvalidTableConfigError, match="outside the files root"):
        FilesConnector(root).validate_config(path_config(name))
    with pytest.raises(InvalidTableConfigError, match="outside the files root"):
        await read(FilesConnector(root), name)


async def test_a_symlinked_folder_that_leaves_the_root_is_refused(root: Path) -> None:
    link(root / "shared", root.parent / "outside")
    with pytest.raises(InvalidTableConfigError, match="outside the files root"):
        await read(FilesConnector(root), "shared/more.csv")


async def test_a_symlink_inside_the_root_is_followed(root: Path) -> None:
    name = link(root / "alias.csv", "ok.csv")
    assert len((await read(FilesConnector(root), name))[0].records) == 1


async def test_a_root_at_slash_still_refuses_system_files() -> None:
    conn = FilesConnector(Path("/"))
    for path in ("/proc/self/environ", "/proc/self/cmdline", "/sys/kernel/hostname", "/dev/null"):
        with pytest.raises(InvalidTableConfigError, match="is a system file"):
            conn.validate_config(path_config(path))


async def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "pipe.csv")
    with pytest.raises(InvalidTableConfigError, match="not a regular file"):
        await read(FilesConnector(root), "pipe.csv")


async def test_a_file_swapped_for_a_symlink_after_validation_is_refused(root: Path) -> None:
    # Checked at validation and when the read starts; then, between two pages, the
    # file becomes a symlink to a secret. The next page's open sees it.
    data = root / "swap.csv"
    data.write_text("id\n" + "".join(f"{i}\n" for i in range(10)))
    conn = FilesConnector(root)
    conn.validate_config(path_config("swap.csv"))
    config = {**path_config("swap.csv"), "page_size": 5}
    pages = conn.pages(
        Table(id="tbl_f", workbook_id="wb", name="f", connector="files", config=config),
        None,
        None,
        ReadContext("j"),
    )
    assert isinstance(pages, AsyncGenerator)
    first = await anext(pages)
    assert len(first.records) == 5
    data.unlink()
    data.symlink_to(root.parent / "secret.csv")
    with pytest.raises(InvalidTableConfigError, match=r"outside the files root|became a symlink"):
        await anext(pages)
    await pages.aclose()


@pytest.mark.parametrize("name", ["spinner.db", "spinner.db-wal", "spinner.db-shm", "temporal.db"])
async def test_the_engines_own_databases_are_refused_even_inside_the_root(
    tmp_path: Path, name: str
) -> None:
    # The root is the data folder itself: the store lives inside it.
    settings = Settings(data_dir=tmp_path, files_root=tmp_path)
    store = SqliteStore(tmp_path / "spinner.db")
    store.migrate()
    for extra in ("spinner.db-wal", "spinner.db-shm", "temporal.db"):
        (tmp_path / extra).touch(exist_ok=True)
    try:
        async with worker_resources(settings, store) as (_, connectors, _webhook):
            files = connectors.get("files")
            with pytest.raises(InvalidTableConfigError, match="the engine's own database files"):
                files.validate_config(path_config(name))
            with pytest.raises(InvalidTableConfigError, match="the engine's own database files"):
                await read(files, name)
    finally:
        store.close()


async def test_a_hard_link_to_the_store_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = SqliteStore(tmp_path / "spinner.db")
    store.migrate()
    settings.files_root_path.mkdir()
    os.link(tmp_path / "spinner.db", settings.files_root_path / "export.csv")
    try:
        async with worker_resources(settings, store) as (_, connectors, _webhook):
            with pytest.raises(InvalidTableConfigError, match="the engine's own database files"):
                await read(connectors.get("files"), "export.csv")
    finally:
        store.close()


async def test_the_root_defaults_to_a_folder_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.files_root_path == tmp_path / "files"
    settings.files_root_path.mkdir()
    (settings.files_root_path / "ok.csv").write_text("id\n7\n")
    (tmp_path / "beside.csv").write_text("id\n8\n")
    async with worker_resources(settings) as (_, connectors, _webhook):
        files = connectors.get("files")
        assert [r for p in await read(files, "ok.csv") for r, _ in p.records] == ["7"]
        for path in ("../beside.csv", "/etc/passwd", "~/.bashrc"):
            with pytest.raises(InvalidTableConfigError):
                await read(files, path)


def test_no_root_refuses_every_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidTableConfigError, match="set SPINNER_FILES_ROOT"):
        FilesConnector(None).validate_config(path_config(str(tmp_path / "x.csv")))
