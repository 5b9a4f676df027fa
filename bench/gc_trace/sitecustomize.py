"""
Loaded at start-up by a server that C{bench.stream --gc-trace} runs with
this folder on C{PYTHONPATH}: appends a line for every garbage collection
(wall-clock start, generation, its CPU time in ms, the objects it freed: on a shared machine a
collection's wall-clock time counts the other processes' turns too) to
C{$BENCH_GC_TRACE-<pid>.txt}
as it happens (twistd ends by re-raising SIGTERM: no exit hooks run).

On C{SIGUSR2} it takes a census of the objects only the collector can free
(those in reference cycles, and what hangs from them): one collection that
keeps them (C{gc.DEBUG_SAVEALL}), their count by type appended as one line
to C{$BENCH_GC_TRACE-census-<pid>.txt} and to standard error (C{gc census:
<count> <type>=<n> ...}), then they are let go.  With C{BENCH_GC_OFF=1} the
automatic collections are off, so a census counts every such object made
since start-up (C{tests/e2e/test_stream_cycles.py}).  Not part of InkFlow.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import time
from typing import IO, Any

_prefix = os.environ.get("BENCH_GC_TRACE")
_started = [0.0, 0.0]
_file: list[IO[str]] = []


def _callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0], _started[1] = time.time(), time.thread_time()
        return
    pause = (time.thread_time() - _started[1]) * 1000.0
    if not _file:
        _file.append(open(f"{_prefix}-{os.getpid()}.txt", "a", encoding="ascii", buffering=1))  # noqa: SIM115
    _file[0].write(f"{_started[0]:.6f} {info['generation']} {pause:.3f} {info.get('collected', 0)}\n")


def _census(signum: int, frame: Any) -> None:
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__.replace(" ", "_") for o in gc.garbage)
        found = len(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    top = " ".join(f"{name}={n}" for name, n in kinds.most_common(8))
    with open(f"{_prefix}-census-{os.getpid()}.txt", "a", encoding="ascii") as out:
        out.write(f"{time.time():.6f} {found} {top}\n")
    every = " ".join(f"{name}={n}" for name, n in kinds.most_common())
    print(f"gc census: {found} {every}", file=sys.stderr, flush=True)


if _prefix:
    if os.environ.get("BENCH_GC_OFF") == "1":
        gc.disable()
    gc.callbacks.append(_callback)
    signal.signal(signal.SIGUSR2, _census)
