"""Python's own allocations in ironic, by source line: loaded by ironic's interpreter
when ``bench/ironic_poll.py`` runs with ``TACET_BENCH_TRACEMALLOC=DIR`` (this directory
on ironic's ``PYTHONPATH``; nothing else loads it).

A daemon thread (started again in each forked worker) watches DIR. ``start.request``
starts tracemalloc: from then on every allocation is traced, so a snapshot holds what
was allocated since and is still alive, and the work before runs at full speed (tracing
slows ironic several times over). ``<stage>.request`` dumps a snapshot to
``DIR/<stage>.<pid>.snapshot``. OpenSSL's and glibc's own memory is not Python's and is
not in it.
"""

import os
import threading
import time
import tracemalloc

DIRECTORY = os.environ.get("TACET_BENCH_TRACEMALLOC")
FRAMES = int(os.environ.get("TACET_BENCH_TRACEMALLOC_FRAMES", "6"))
REQUEST = ".request"


def _watch() -> None:
    done: set[str] = set()
    while True:
        time.sleep(1)
        try:
            names = os.listdir(DIRECTORY)
        except OSError:
            continue
        for name in sorted(names):
            if not name.endswith(REQUEST) or name in done:
                continue
            done.add(name)
            stage = name[: -len(REQUEST)]
            if stage == "start":
                if not tracemalloc.is_tracing():  # a worker forked later inherits it
                    tracemalloc.start(FRAMES)
                continue
            if not tracemalloc.is_tracing():
                continue  # asked before the start: no snapshot, the bench says so
            target = os.path.join(DIRECTORY, f"{stage}.{os.getpid()}.snapshot")
            tracemalloc.take_snapshot().dump(target + ".part")
            os.rename(target + ".part", target)


def _start() -> None:
    threading.Thread(target=_watch, name="bench-tracemalloc", daemon=True).start()


if DIRECTORY:
    _start()
    os.register_at_fork(after_in_child=_start)
