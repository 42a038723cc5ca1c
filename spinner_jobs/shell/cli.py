"""The ``spinner-jobs`` command line: run workers and the dev stack, enqueue and watch jobs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import timedelta
from enum import StrEnum
from ipaddress import ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table as RichTable
from typer.exceptions import TyperException

from enqueuer.client import Enqueuer
from enqueuer.logs import configure_logging
from enqueuer.settings import ServiceType, Settings
from spinner_jobs.core.errors import SpinnerError
from spinner_jobs.core.models import Actor, JobStats, JobStatus, Table, Workbook
from spinner_jobs.shell.watch import summary_table, watch_job

if TYPE_CHECKING:
    from temporalio.client import Client, Interceptor
    from temporalio.runtime import Runtime

    from enqueuer.codec import CodecServer, EncryptionCodec
    from enqueuer.tracing import Tracing
    from spinner_jobs.api import ApiServer
    from spinner_jobs.store import Store

app = typer.Typer(
    help="spinner-jobs: durable background jobs on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
log = structlog.get_logger(__name__)
T = TypeVar("T")


class AuthKind(StrEnum):
    """How a connector account's secret is sent."""

    BEARER = "bearer"
    API_KEY = "api_key"


def _settings() -> Settings:
    settings = Settings.load()
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _codec(settings: Settings) -> EncryptionCodec | None:
    from enqueuer.codec import payload_codec

    return payload_codec(settings.payload_key)


@contextmanager
def _tracing(settings: Settings) -> Iterator[Tracing | None]:
    """The process's tracing (SPINNER_OTLP_ENDPOINT; None when unset), flushed at the end."""
    from enqueuer.tracing import Tracing

    tracing = Tracing.from_settings(settings)
    try:
        yield tracing
    finally:
        if tracing is not None:
            tracing.shutdown()


def _interceptors(tracing: Tracing | None) -> list[Interceptor]:
    return tracing.interceptors() if tracing is not None else []


async def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM, so long-running commands stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# --- processes -------------------------------------------------------------------------


@app.command()
def worker() -> None:
    """Run a worker until Ctrl-C / SIGTERM (monolith: with the HTTP API in the same process).

    SPINNER_SERVICE_TYPE=worker runs the worker alone; monolith (the default) also
    serves the HTTP API; frontend refuses (use `spinner-jobs api`).
    """
    settings = _settings()
    if settings.service_type == ServiceType.FRONTEND:
        raise typer.BadParameter(
            "SPINNER_SERVICE_TYPE=frontend runs no worker; use `spinner-jobs api`, or set "
            "worker or monolith to process jobs"
        )
    _run(_worker(settings))


async def _worker(settings: Settings) -> None:
    from enqueuer.backends.temporal import TemporalBackend
    from spinner_jobs.shell.devserver import ensure_search_attributes
    from spinner_jobs.worker.main import tune_gc
    from spinner_jobs.worker.metrics import metrics_runtime

    stop = await _stop_on_signals()
    runtime = metrics_runtime(settings.metrics_port)
    with _tracing(settings) as tracing:
        client = await TemporalBackend(
            settings.temporal,
            settings.enqueue_timeout,
            runtime=runtime,
            codec=_codec(settings),
            interceptors=_interceptors(tracing),
        ).client()
        await ensure_search_attributes(client)
        tune_gc()
        await _serve(settings, stop, client, tracing)


@app.command()
def dev() -> None:
    """Start the Temporal dev server (Web UI on :8233, SQLite in the data folder) and a worker.

    With SPINNER_SERVICE_TYPE=monolith (the default) the HTTP API runs too; frontend
    runs the API without a worker, worker the worker without an API.
    """
    settings = _settings()
    _run(_dev(settings))


async def _dev(settings: Settings) -> None:
    from spinner_jobs.worker.main import tune_gc
    from spinner_jobs.worker.metrics import metrics_runtime

    stop = await _stop_on_signals()
    codec_server = _ui_codec_server(settings)
    endpoint = None
    if codec_server is not None:
        assert settings.codec.token is not None
        endpoint = f"{codec_server.start()}/{settings.codec.token.get_secret_value()}"
        console.print(f"Codec server for the Web UI on {codec_server.url}")
    try:
        with _tracing(settings) as tracing:
            async with _temporal_server(
                settings,
                metrics_runtime(settings.metrics_port),
                ui_codec_endpoint=endpoint,
                interceptors=_interceptors(tracing),
            ) as client:
                console.print(f"Web UI: {settings.temporal.ui_url}   (Ctrl-C stops everything)")
                tune_gc()
                await _serve(settings, stop, client, tracing)
    finally:
        if codec_server is not None:
            codec_server.stop()


def _ui_codec_server(settings: Settings) -> CodecServer | None:
    """With payloads encrypted and a codec token set, a codec server for the dev Web UI."""
    from enqueuer.codec import CodecServer

    codec = _codec(settings)
    c = settings.codec
    if codec is None or c.token is None:
        return None
    origins = [o.strip() for o in c.origins.split(",") if o.strip()]
    return CodecServer(codec, c.token, origins, host=c.host, port=c.port)


@asynccontextmanager
async def _temporal_server(
    settings: Settings,
    runtime: Runtime | None = None,
    *,
    ui_codec_endpoint: str | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> AsyncIterator[Client]:
    """Reuse a running Temporal server at the configured address, or start the dev server.

    Yields a connected client (on ``runtime``, if given) with the search attributes set up;
    a dev server started here is stopped on the way out.
    """
    from enqueuer.backends.temporal import TemporalBackend
    from spinner_jobs.shell.devserver import DevServer, ensure_search_attributes, port_open

    t = settings.temporal
    server = None
    if port_open(t.address):
        console.print(f"Using the Temporal server already running at {t.address}")
    else:
        data = settings.data_dir
        console.print(f"Starting the Temporal dev server at {t.address} (data in {data}/)")
        server = await DevServer.start(
            t.address,
            ui_port=int(t.ui_url.rsplit(":", 1)[-1].split("/")[0]),
            db_file=data / "temporal.db",
            namespace=t.namespace,
            log_file=data / "temporal.log",
            ui_codec_endpoint=ui_codec_endpoint,
        )
    try:
        client = await TemporalBackend(
            t,
            settings.enqueue_timeout,
            runtime=runtime,
            codec=_codec(settings),
            interceptors=interceptors,
        ).client()
        await ensure_search_attributes(client)
        yield client
    finally:
        if server is not None:
            console.print("Stopping the Temporal dev server")
            server.stop()


# --- the HTTP API ------------------------------------------------------------------------


@app.command()
def api() -> None:
    """Serve the HTTP API on SPINNER_API_HOST:SPINNER_API_PORT until Ctrl-C / SIGTERM.

    SPINNER_SERVICE_TYPE=frontend serves the API alone; monolith (the default) runs a
    worker in the same process; worker refuses (it runs no API). On SIGTERM the API
    stops accepting connections, ends event streams and lets in-flight requests finish.
    """
    settings = _settings()
    if settings.service_type == ServiceType.WORKER:
        raise typer.BadParameter(
            "SPINNER_SERVICE_TYPE=worker runs no API; set frontend (API only) or monolith "
            "(API and worker), or run `spinner-jobs worker`"
        )
    _run(_api(settings))


async def _api(settings: Settings) -> None:
    stop = await _stop_on_signals()
    with _tracing(settings) as tracing:
        if settings.service_type == ServiceType.MONOLITH and settings.use_jobs:
            await _worker_and_api(settings, stop, tracing)
        else:
            await _serve(settings, stop, None, tracing)


async def _worker_and_api(settings: Settings, stop: asyncio.Event, tracing: Tracing | None) -> None:
    from enqueuer.backends.temporal import TemporalBackend
    from spinner_jobs.shell.devserver import ensure_search_attributes
    from spinner_jobs.worker.main import tune_gc
    from spinner_jobs.worker.metrics import metrics_runtime

    client = await TemporalBackend(
        settings.temporal,
        settings.enqueue_timeout,
        runtime=metrics_runtime(settings.metrics_port),
        codec=_codec(settings),
        interceptors=_interceptors(tracing),
    ).client()
    await ensure_search_attributes(client)
    tune_gc()
    await _serve(settings, stop, client, tracing)


async def _serve(
    settings: Settings, stop: asyncio.Event, client: Client | None, tracing: Tracing | None
) -> None:
    """Run what SPINNER_SERVICE_TYPE says, the worker (on ``client``) and/or the API, until stop.

    The API listens before the worker starts, so a taken port fails at once; either
    one ending (or failing) stops the other.
    """
    from enqueuer.backends.temporal import TemporalBackend
    from spinner_jobs.api import ApiServer, create_app
    from spinner_jobs.store import open_store
    from spinner_jobs.worker.main import run_worker

    kind = settings.service_type
    with_worker = kind != ServiceType.FRONTEND and client is not None
    if kind == ServiceType.WORKER:
        assert client is not None
        await run_worker(settings, client, stop)
        return
    store = open_store(settings.store_url, secret_key=settings.secret_key)
    enqueuer = (
        Enqueuer(
            settings,
            store,
            TemporalBackend(settings.temporal, settings.enqueue_timeout, client=client),
        )
        if client is not None
        else Enqueuer.from_settings(settings, store, tracing=tracing)
    )
    server = ApiServer(create_app(settings, enqueuer, store, tracing=tracing), settings.api)
    try:
        url = await server.start()
        console.print(f"HTTP API on {url} (OpenAPI: {url}/docs; keys: spinner-jobs api-key create)")

        async def worker_then_stop() -> None:
            try:
                if with_worker:
                    assert client is not None
                    await run_worker(settings, client, stop)
                else:
                    await stop.wait()
            finally:
                stop.set()

        async def api_until_stop() -> None:
            await stop.wait()
            await server.stop()

        outcomes = await asyncio.gather(
            worker_then_stop(), api_until_stop(), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
    finally:
        await server.stop()
        await enqueuer.aclose()
        store.close()


api_key_app = typer.Typer(
    help="HTTP API keys: each acts for one organization; shown once, stored as a hash.",
    no_args_is_help=True,
)
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
def api_key_create(
    org: Annotated[str, typer.Option(help="Organization the key acts for.")],
    name: Annotated[str, typer.Option(help="What the key is for (e.g. the service's name).")],
) -> None:
    """Create a key and print it (on stdout, this once: only its hash is stored)."""
    from spinner_jobs.api import create_api_key

    settings = _settings()
    with _open_store(settings) as store:
        record, key = create_api_key(store, org, name)
    typer.echo(key)
    typer.echo(
        f"API key {record.id} of {org} ({name}); shown only now: keep it in your secret store",
        err=True,
    )


@api_key_app.command("list")
def api_key_list(
    org: Annotated[str | None, typer.Option(help="Only this organization's keys.")] = None,
) -> None:
    """List keys: ids, organizations, names, when created and revoked (never the keys)."""
    settings = _settings()
    with _open_store(settings) as store:
        keys = store.list_api_keys(org)
    table = RichTable(title="HTTP API keys")
    for column in ("id", "organization", "name", "created", "revoked"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.id,
            k.organization_id,
            k.name,
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
        )
    console.print(table)


@api_key_app.command("revoke")
def api_key_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `api-key list`) or the key.")],
) -> None:
    """Revoke a key: requests with it are refused (401) from now on."""
    from datetime import UTC, datetime

    from spinner_jobs.api.keys import key_id_of

    settings = _settings()
    wanted = key_id_of(key_id) or key_id
    with _open_store(settings) as store:
        revoked = store.revoke_api_key(wanted, datetime.now(UTC))
    if revoked is None:
        raise typer.BadParameter(f"no API key {wanted!r}; see `spinner-jobs api-key list`")
    log.info("api_key_revoked", api_key_id=revoked.id, organization_id=revoked.organization_id)
    console.print(f"API key {revoked.id} of {revoked.organization_id} ({revoked.name}) revoked")


# --- the main demo -------------------------------------------------------------------


DEMO_TABLES = {
    "customers": 30_000,
    "orders": 40_000,
    "invoices": 20_000,
    "products": 6_000,
    "events": 4_000,
}


@app.command()
def demo(
    keep: Annotated[
        bool | None,
        typer.Option(help="Keep the dev server and worker up afterwards (default: on a terminal)."),
    ] = None,
    scale: Annotated[float, typer.Option(help="Multiply the demo's record counts.")] = 1.0,
) -> None:
    """Download a demo workbook (~100k records) through dev server + worker, with live progress."""
    settings = _settings()
    _run(_demo(settings, keep if keep is not None else sys.stdin.isatty(), scale))


async def _demo(settings: Settings, keep: bool, scale: float) -> None:
    from enqueuer.backends.temporal import TemporalBackend
    from spinner_jobs.shell.sample_api import SampleApi, SampleTable, Style, sample_table_config
    from spinner_jobs.store import open_store
    from spinner_jobs.worker.main import build_worker, tune_gc, worker_resources

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # The sample source listens on loopback, which connectors reach only when allowed.
    loopback = (*settings.http_allowed_networks, ip_network("127.0.0.0/8"))
    settings = settings.model_copy(update={"http_allowed_networks": loopback})
    # Logs go to a file so the progress bars stay readable.
    log_path = settings.data_dir / "demo.log"
    log_file = open(log_path, "a")  # noqa: SIM115, ASYNC230
    configure_logging(settings.log_format, "info", stream=log_file)
    counts = {name: max(1, int(n * scale)) for name, n in DEMO_TABLES.items()}
    styles: list[Style] = ["cursor", "json_link", "header_link", "offset", "page_number"]
    api = SampleApi(
        {
            name: SampleTable(records=n, style=style)
            for (name, n), style in zip(counts.items(), styles, strict=True)
        }
    )
    base_url = api.start()
    console.print(f"Sample REST source serving {len(counts)} tables at {base_url}")
    store = open_store(settings.store_url, secret_key=settings.secret_key)
    try:
        async with _temporal_server(settings) as client:
            workbook = Workbook(
                id="wb_demo",
                organization_id="org_demo",
                name="Demo workbook",
                tables=[
                    Table(
                        id=f"tbl_{name}",
                        workbook_id="wb_demo",
                        name=name,
                        connector="http",
                        config=sample_table_config(base_url, name, style),
                    )
                    for name, style in zip(counts, styles, strict=True)
                ],
            )
            await asyncio.to_thread(store.put_workbook, workbook)
            tune_gc()
            async with (
                worker_resources(settings, store) as (st, connectors, webhook),
                build_worker(client, settings, st, connectors, webhook),
                AsyncExitStack() as stack,
            ):
                backend = TemporalBackend(
                    settings.temporal, settings.enqueue_timeout, client=client
                )
                enqueuer = Enqueuer(settings, store, backend)
                api_server, api_url = await _demo_api(settings, enqueuer, store)
                stack.push_async_callback(api_server.stop)
                began = time.monotonic()
                actor = Actor(user_id="u_demo", organization_id="org_demo")
                ref = await enqueuer.enqueue_download_records_job(
                    workbook.id, actor, metadata={"started_by": "spinner-jobs demo"}
                )
                console.print(
                    f"Enqueued job [bold]{ref.job_id}[/] in "
                    f"{(time.monotonic() - began) * 1000:.0f} ms; downloading:"
                )
                console.print(f"Watch it in a browser: {_view_link(settings, api_url, ref.job_id)}")
                expected = {f"tbl_{name}": n for name, n in counts.items()}
                final = await watch_job(
                    enqueuer, ref.job_id, console, actor=actor, expected=expected
                )
                seconds = time.monotonic() - began
                console.print(summary_table(final, seconds))
                ns = settings.temporal.namespace
                console.print(
                    f"See it in the Web UI: {settings.temporal.ui_url}/namespaces/{ns}/workflows/"
                    f"{ref.job_id}\n  or list jobs by workbook: "
                    f"{settings.temporal.ui_url}/namespaces/{ns}/workflows?query=WorkbookId%3D%22wb_demo%22"
                    f"\nLogs: {log_path}   Store: {store.url}"
                )
                if final.status != JobStatus.COMPLETED:
                    raise typer.Exit(1)
                if keep:
                    console.print("Dev server and worker stay up; Ctrl-C stops everything.")
                    stop = await _stop_on_signals()
                    await stop.wait()
    finally:
        api.stop()
        store.close()
        log_file.close()


async def _demo_api(settings: Settings, enqueuer: Enqueuer, store: Store) -> tuple[ApiServer, str]:
    """The HTTP API beside the demo, on SPINNER_API_PORT or, when that is taken, any port."""
    from spinner_jobs.api import ApiServer, create_app
    from spinner_jobs.api.problems import ApiAddressError

    for api in (settings.api, settings.api.model_copy(update={"port": 0})):
        server = ApiServer(create_app(settings, enqueuer, store), api)
        try:
            return server, await server.start()
        except ApiAddressError:
            continue
    raise AssertionError("port 0 is always free")  # pragma: no cover


def _view_link(settings: Settings, api_url: str, job_id: str) -> str:
    """A read-only link to the job's live page (as POST /v1/jobs/{id}/view-link gives)."""
    from spinner_jobs.api.view import ViewSigner, make_view_link, view_key

    signer = ViewSigner(view_key(settings))
    link = make_view_link(signer, job_id, "org_demo", settings=settings.api, base_url=api_url)
    return link.url


# --- catalog -----------------------------------------------------------------------------


@app.command("create-workbook")
def create_workbook(
    workbook_id: Annotated[
        str | None,
        typer.Argument(help="Id of the new workbook (with --from-file: must match the file's)."),
    ] = None,
    org: Annotated[
        str | None,
        typer.Option(help="Organization owning it (with --from-file: must match the file's)."),
    ] = None,
    tables: Annotated[int, typer.Option(help="Number of demo tables.")] = 3,
    records: Annotated[int, typer.Option(help="Records per demo table.")] = 10_000,
    page_size: Annotated[int, typer.Option(help="Records per page.")] = 500,
    from_file: Annotated[
        Path | None,
        typer.Option(help="JSON file of a whole Workbook (any connectors; see the README)."),
    ] = None,
) -> None:
    """Create (or replace) a workbook: demo tables, or any tables from a JSON file.

    Every table config is validated by its connector, and every account_id must name
    an account of the workbook's organization, before anything is stored.
    """
    settings = _settings()
    if from_file is not None:
        workbook = _workbook_from_file(from_file, workbook_id, org)
    else:
        if workbook_id is None or org is None:
            raise typer.BadParameter("give a WORKBOOK_ID and --org, or --from-file FILE")
        workbook = Workbook(
            id=workbook_id,
            organization_id=org,
            name=workbook_id,
            tables=[
                Table(
                    id=f"{workbook_id}_t{i}",
                    workbook_id=workbook_id,
                    name=f"table {i}",
                    connector="demo",
                    config={"records": records, "page_size": page_size, "seed": i},
                )
                for i in range(1, tables + 1)
            ],
        )
    with _open_store(settings) as store:
        store.put_workbook(workbook)
    console.print(f"workbook {workbook.id}: {', '.join(t.id for t in workbook.tables)}")


def _workbook_from_file(path: Path, workbook_id: str | None, org: str | None) -> Workbook:
    """Read and validate a workbook file: ids agree, every table config is valid."""
    from pydantic import ValidationError

    from spinner_jobs.connectors.registry import default_connectors
    from spinner_jobs.core.errors import InvalidTableConfigError

    try:
        workbook = Workbook.model_validate_json(path.read_text())
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise typer.BadParameter(f"{path} is not a workbook file: {problems}") from None
    if workbook_id is not None and workbook_id != workbook.id:
        raise typer.BadParameter(
            f"WORKBOOK_ID {workbook_id!r} disagrees with the file's id {workbook.id!r}; "
            "drop the argument or fix the file"
        )
    if org is not None and org != workbook.organization_id:
        raise typer.BadParameter(
            f"--org {org!r} disagrees with the file's organization_id "
            f"{workbook.organization_id!r}; drop the option or fix the file"
        )
    invalid: list[str] = []
    connectors = default_connectors()
    for table in workbook.tables:
        if table.workbook_id != workbook.id:
            invalid.append(
                f"table {table.id!r}: workbook_id {table.workbook_id!r} is not {workbook.id!r}"
            )
            continue
        try:
            connectors.get(table.connector).validate_config(table.config)
        except InvalidTableConfigError as exc:
            invalid.append(f"table {table.id!r}: {exc}")
    if invalid:
        raise InvalidTableConfigError(
            f"{path}: {'; '.join(invalid)} (see the README's workbook file format)"
        )
    return workbook


@contextmanager
def _open_store(settings: Settings) -> Iterator[Store]:
    from spinner_jobs.store import open_store

    store = open_store(settings.store_url, secret_key=settings.secret_key)
    try:
        yield store
    finally:
        store.close()


# --- connector accounts ------------------------------------------------------------------

account_app = typer.Typer(
    help="Connector accounts: the credentials tables use (secrets encrypted at rest).",
    no_args_is_help=True,
)
app.add_typer(account_app, name="account")


@account_app.command("create")
def account_create(
    account_id: Annotated[str, typer.Argument(help="Id of the account (tables name it).")],
    org: Annotated[str, typer.Option(help="Organization owning it; only its workbooks use it.")],
    auth: Annotated[
        AuthKind, typer.Option(help="bearer: Authorization: Bearer; api_key: a header.")
    ],
    header: Annotated[
        str, typer.Option(help="Header carrying the key, for --auth api_key.")
    ] = "X-API-Key",
    secret_env: Annotated[
        str | None,
        typer.Option(help="Read the secret from this environment variable instead of stdin."),
    ] = None,
) -> None:
    """Create (or replace) an account; the secret comes from stdin or --secret-env, never argv.

    On a terminal the secret is asked for without echo; otherwise stdin is read to its
    end and one trailing newline is dropped (``printf %s "$TOKEN" | spinner-jobs ...``).
    """
    from pydantic import SecretStr

    from spinner_jobs.core.models import ConnectorAccount

    settings = _settings()
    if secret_env is not None:
        # The one read of a variable the user names on purpose; settings stay in Settings.
        secret = os.environ.get(secret_env, "")
        source = f"the environment variable {secret_env}"
    elif sys.stdin.isatty():
        secret = typer.prompt("Secret", hide_input=True)
        source = "the prompt"
    else:
        secret = sys.stdin.read().removesuffix("\n").removesuffix("\r")
        source = "stdin"
    if not secret.strip():
        raise typer.BadParameter(f"no secret on {source}; pipe it in or use --secret-env VAR")
    account = ConnectorAccount(
        id=account_id,
        organization_id=org,
        auth=auth.value,
        secret=SecretStr(secret),
        header=header,
    )
    with _open_store(settings) as store:
        store.put_account(account)
    log.info("account_stored", account_id=account_id, organization_id=org, auth=auth.value)
    console.print(f"account {account_id} ({auth.value}) stored for {org}")


@account_app.command("list")
def account_list(
    org: Annotated[str | None, typer.Option(help="Only this organization's accounts.")] = None,
) -> None:
    """List accounts: ids, organizations, auth kinds and key ids (never secrets)."""
    settings = _settings()
    with _open_store(settings) as store:
        accounts = store.list_accounts(org)
    table = RichTable(title="connector accounts")
    for column in ("id", "organization", "auth", "header", "key id"):
        table.add_column(column)
    for a in accounts:
        table.add_row(
            a.id,
            a.organization_id,
            a.auth,
            a.header if a.auth == "api_key" else "-",
            a.key_id or "(plain)",
        )
    console.print(table)


@account_app.command("rekey")
def account_rekey() -> None:
    """Re-encrypt every account under the current key (after a rotation or an upgrade)."""
    settings = _settings()
    with _open_store(settings) as store:
        summaries = store.list_accounts()
        for summary in summaries:
            account = store.get_account(summary.id)
            if account is not None:
                store.put_account(account)
    console.print(f"{len(summaries)} accounts encrypted under the current key")


@app.command("new-key")
def new_key() -> None:
    """Print a fresh random key for SPINNER_SECRET_KEY or SPINNER_PAYLOAD_KEY."""
    from spinner_jobs.store.secrets import new_key as make_key

    console.print(make_key(), highlight=False)


# --- payload encryption ------------------------------------------------------------------


@app.command("codec-server")
def codec_server() -> None:
    """Serve the Temporal Web UI's remote codec endpoint (decrypts payloads for the UI).

    Needs SPINNER_PAYLOAD_KEY and SPINNER_CODEC_TOKEN; listens on SPINNER_CODEC_HOST /
    SPINNER_CODEC_PORT and allows the browser origins of SPINNER_CODEC_ORIGINS.
    """
    settings = _settings()
    if settings.payload_key is None:
        raise typer.BadParameter("SPINNER_PAYLOAD_KEY is not set: there is nothing to decode")
    if settings.codec.token is None:
        raise typer.BadParameter(
            "SPINNER_CODEC_TOKEN is not set; the codec server refuses to serve without one"
        )
    server = _ui_codec_server(settings)
    assert server is not None
    origins = [o.strip() for o in settings.codec.origins.split(",") if o.strip()]
    console.print(
        f"Codec server on {server.url} for {', '.join(origins)}; requests need "
        f"Authorization: Bearer $SPINNER_CODEC_TOKEN, or use {server.url}/<token> as the "
        "UI's codec endpoint (temporal server start-dev --ui-codec-endpoint ...)"
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


# --- jobs --------------------------------------------------------------------------------


@app.command()
def enqueue(
    job_type: Annotated[str, typer.Argument(help="Job type (see `spinner-jobs job-types`).")],
    workbook_id: Annotated[str, typer.Argument(help="Workbook whose tables the job works on.")],
    user: Annotated[str, typer.Option(help="Id of the user asking.")],
    org: Annotated[str, typer.Option(help="Organization of the user.")],
    table: Annotated[list[str] | None, typer.Option(help="Table id (repeat); default all.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            help="The job type's own input field as NAME=VALUE (repeat); "
            "VALUE is read as JSON when it parses, else as text."
        ),
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="JSON object carried with the job.")] = None,
    priority: Annotated[int | None, typer.Option(help="1 (runs first) to 5 (runs last).")] = None,
    job_id: Annotated[
        str | None, typer.Option(help="Idempotency key: the same key again returns that job.")
    ] = None,
    delay: Annotated[float | None, typer.Option(help="Start after this many seconds.")] = None,
    watch: Annotated[bool, typer.Option(help="Follow the job with progress bars.")] = False,
) -> None:
    """Enqueue a job of any job type and print its id."""
    settings = _settings()
    fields: dict[str, Any] = {"workbook_id": workbook_id, "table_ids": table or None}
    for item in option or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--option")
        try:
            fields[name] = json.loads(value)
        except ValueError:
            fields[name] = value
    options: dict[str, Any] = {
        "metadata": json.loads(metadata) if metadata else None,
        "priority": priority,
        "job_id": job_id,
        "delay": timedelta(seconds=delay) if delay is not None else None,
    }
    actor = Actor(user_id=user, organization_id=org)
    _run(_enqueue(settings, job_type, fields, actor, options, watch))


async def _enqueue(
    settings: Settings,
    job_type: str,
    fields: dict[str, Any],
    actor: Actor,
    options: dict[str, Any],
    watch: bool,
) -> None:
    async with Enqueuer.from_settings(settings) as enqueuer:
        given = {name: value for name, value in options.items() if value is not None}
        ref = await enqueuer.enqueue(job_type, fields, actor=actor, options=given)
        console.print(ref.job_id)
        # In-process jobs live in this process: stay until they finish.
        if watch or not settings.use_jobs:
            final = await watch_job(enqueuer, ref.job_id, console, actor=actor)
            console.print(summary_table(final))


@app.command("job-types")
def job_types() -> None:
    """List the job types with their effective queue settings."""
    from enqueuer.jobtypes import JOB_TYPES, queue_config

    settings = _settings()
    table = RichTable(title="job types")
    for column in (
        "job type",
        "input",
        "task queue",
        "priority",
        "tables at once",
        "retries",
        "keep completed/failed",
        "locks",
        "what it does",
    ):
        table.add_column(column)
    for kind in JOB_TYPES:
        queue = queue_config(settings, kind)
        own = [n for n in kind.input_model.model_fields if n not in ("workbook_id", "table_ids")]
        table.add_row(
            kind.name,
            ", ".join(["workbook_id", "table_ids", *own]),
            queue.task_queue,
            str(queue.priority),
            str(queue.table_parallelism),
            str(queue.retry.maximum_attempts),
            f"{queue.keep_completed}/{queue.keep_failed}",
            kind.locks.value,
            kind.description,
        )
    console.print(table)


_JobOrg = Annotated[str, typer.Option("--org", help="Organization the job belongs to.")]
_JobUser = Annotated[str, typer.Option("--user", help="Id of the user asking.")]


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="Job id.")], org: _JobOrg, user: _JobUser = "cli"
) -> None:
    """Print a job's progress as JSON."""
    settings = _settings()
    actor = Actor(user_id=user, organization_id=org)

    async def show() -> None:
        async with Enqueuer.from_settings(settings) as enqueuer:
            progress = await enqueuer.progress(job_id, actor=actor)
            console.print_json(progress.model_dump_json())

    _run(show())


@app.command()
def watch(
    job_id: Annotated[str, typer.Argument(help="Job id.")], org: _JobOrg, user: _JobUser = "cli"
) -> None:
    """Follow a job with live per-table progress bars until it closes."""
    settings = _settings()
    actor = Actor(user_id=user, organization_id=org)

    async def follow() -> None:
        async with Enqueuer.from_settings(settings) as enqueuer:
            final = await watch_job(enqueuer, job_id, console, actor=actor)
            console.print(summary_table(final))

    _run(follow())


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")], org: _JobOrg, user: _JobUser = "cli"
) -> None:
    """Cancel a job; its table locks are released."""
    settings = _settings()
    actor = Actor(user_id=user, organization_id=org)

    async def stop() -> None:
        async with Enqueuer.from_settings(settings) as enqueuer:
            await enqueuer.cancel(job_id, actor=actor)
            console.print(f"cancel requested for {job_id}")

    _run(stop())


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's jobs.")] = None,
    job_type: Annotated[
        str | None, typer.Option("--job-type", help="Only this job type's jobs; default all.")
    ] = None,
) -> None:
    """Print job counts, success/failure rates, processing time p50/p95 and queue depth.

    Covers the jobs of every job type (or of one); the queue depth and workers are
    those of the job type's task queue (SPINNER_TEMPORAL_TASK_QUEUE unless the job
    types' settings move them). In-process jobs
    (SPINNER_USE_JOBS=false) live in the process that enqueued them, so a separate
    stats command sees none of them.
    """
    settings = _settings()

    async def show() -> None:
        async with Enqueuer.from_settings(settings) as enqueuer:
            figures = await enqueuer.stats(org, job_type)
        if as_json:
            console.print_json(figures.model_dump_json())
        else:
            console.print(_stats_table(figures))

    _run(show())


def _stats_table(s: JobStats) -> RichTable:
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def seconds(value: timedelta | None) -> str:
        return "-" if value is None else f"{value.total_seconds():.2f} s"

    def count(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    kinds = ", ".join(s.job_types) or "no"
    table = RichTable(title=f"{kinds} jobs ({s.task_queue or s.backend.value})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("enqueued", count(s.enqueued)),
        ("running", count(s.running)),
        ("completed", count(s.completed)),
        ("failed", count(s.failed)),
        ("cancelled", count(s.cancelled)),
        ("terminated", count(s.terminated)),
        ("timed out", count(s.timed_out)),
        ("success rate", rate(s.success_rate)),
        ("failure rate", rate(s.failure_rate)),
        (f"processing time p50 (last {s.processing_time_sample})", seconds(s.processing_time_p50)),
        (f"processing time p95 (last {s.processing_time_sample})", seconds(s.processing_time_p95)),
        ("queue depth", count(s.queue_depth)),
        ("workers", count(s.workers)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def main() -> None:
    """Console-script entry point; leaves with ``os._exit`` (see the SDK exit hazard)."""
    code = 0
    try:
        result = app(standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except TyperException as exc:
        console.print(f"[red]error:[/] {exc.format_message()}")
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except SpinnerError as exc:
        console.print(f"[red]error:[/] {exc}")
        code = 1
    except ValidationError as exc:  # a model built from command-line values
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        console.print(f"[red]error:[/] invalid {where}: {first['msg']}")
        code = 2
    except json.JSONDecodeError as exc:
        console.print(f"[red]error:[/] not valid JSON ({exc.msg} at character {exc.pos})")
        code = 2
    # The Temporal SDK's threads can abort the interpreter at exit after the work is done;
    # flush and leave directly with the real status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
