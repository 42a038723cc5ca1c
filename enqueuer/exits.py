"""A clean interpreter exit for processes that used Temporal clients or workers.

The Temporal SDK does a client's and a worker's I/O on the threads of a Rust (Tokio)
runtime; every client and worker holds a reference to its runtime, and the SDK keeps
one more for its default runtime. When the last reference goes while the interpreter is
fully alive, the runtime stops and joins its threads. When it goes later, during
interpreter finalization, or never, those threads are still running as Python tears
down, and one that enters Python then (to hand a result back, say) kills the process:
``Fatal Python error: PyGILState_Release`` (status 134) or a segfault (139), after the
work is done (sdk-python issue 300).

So once a client is connected (or a worker run), an exit hook is registered that,
before finalization starts: drops the clients the engine's backends hold, drops the
SDK's own reference to its default runtime, and collects garbage (reference cycles
among SDK objects are common). Runtimes that nothing else holds then stop while
Python can still serve their threads. A client or worker the caller still references
at exit (a module global, say) keeps its runtime alive; :func:`release_sdk_runtimes`
then logs a warning saying so.
"""

from __future__ import annotations

import atexit
import gc
import os
import weakref
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


class ClientHolder(Protocol):
    """Something that holds a Temporal client it can let go of."""

    def release_client(self) -> None:
        """Drop the reference to the client (reconnecting on next use)."""


_holders: weakref.WeakSet[ClientHolder] = weakref.WeakSet()
_installed = False


def install_exit_hook() -> None:
    """Register :func:`release_sdk_runtimes` to run at interpreter exit (once)."""
    global _installed
    if not _installed:
        atexit.register(release_sdk_runtimes)
        _installed = True


def hold_until_exit(holder: ClientHolder) -> None:
    """Note ``holder`` so its client is dropped at exit; registers the exit hook."""
    _holders.add(holder)
    install_exit_hook()


def release_sdk_runtimes() -> None:
    """Drop the engine's and the SDK's references to SDK runtimes, then collect.

    Called at exit by the hook; any runtime left without references stops its
    threads here. A later use of a client reconnects on a fresh runtime.
    """
    for holder in list(_holders):
        holder.release_client()
    _forget_default_runtime()
    # Objects frozen by worker.main.tune_gc are invisible to the collector; thaw them.
    gc.unfreeze()
    for _ in range(2):
        _apply_deferred_decrefs()
        gc.collect()
    alive = sdk_threads()
    if alive:
        log.warning(
            "sdk_threads_alive_at_exit",
            threads=alive,
            hint="a Temporal client or worker is still referenced (e.g. a module global); "
            "drop it before the program ends, or exit with os._exit after flushing",
        )


def _forget_default_runtime() -> None:
    # The SDK keeps its default runtime in a module-level slot with no public way to
    # empty it; the clean-exit test (tests/test_clean_exit.py) fails if this stops working.
    import temporalio.runtime

    ref = getattr(temporalio.runtime, "_runtime_ref", None)
    if ref is not None and hasattr(ref, "_default_runtime"):
        ref._default_runtime = None


def _apply_deferred_decrefs() -> None:
    # A Rust thread that lets go of a Python object without holding the GIL only queues
    # the decrement; the bridge applies the queue on its next call from Python. Left
    # queued, such a reference (seen here in about 1 run in 40) keeps a client, and so
    # its runtime and threads, alive past exit. A call that does nothing (no thread has
    # id 0) applies it.
    from temporalio.bridge.runtime import Runtime

    Runtime._raise_in_thread(0, RuntimeError)


def sdk_threads() -> int:
    """How many threads of SDK runtimes are alive (0 where this cannot be seen)."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 0
    count = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().startswith("tokio-")
        except OSError:
            continue
    return count
