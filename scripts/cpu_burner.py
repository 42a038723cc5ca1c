"""Keep the machine's cores busy for a while, to run the tests under load.

    python scripts/cpu_burner.py --seconds 600          # one busy process per core
    python scripts/cpu_burner.py --seconds 60 --procs 2

Each busy process spins in a tight loop until the time is up. The burner stops by
itself after ``--seconds``, or on Ctrl-C / SIGTERM, and takes its processes with it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import time


def _spin(until: float) -> None:
    # Ctrl-C goes to the whole foreground group: leave it to the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    x = 0
    while time.monotonic() < until:
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    parser.add_argument(
        "--procs", type=int, default=os.cpu_count() or 2, help="busy processes (default: cores)"
    )
    args = parser.parse_args(argv)
    until = time.monotonic() + args.seconds
    procs = [mp.Process(target=_spin, args=(until,), daemon=True) for _ in range(args.procs)]
    for p in procs:
        p.start()

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # Also when started in the background, where a shell may have ignored SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        f"cpu_burner: {args.procs} busy processes for {args.seconds:g}s (pid {os.getpid()})",
        file=sys.stderr,
    )
    try:
        for p in procs:
            p.join(max(0.0, until - time.monotonic()) + 5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
    print("cpu_burner: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
