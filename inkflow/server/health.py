"""
The process's own figures for health (L{ProcessMetrics}): the one place
psutil is read; it never blocks (C{cpu_percent} is measured between two
calls).  The snapshot itself is put together by L{inkflow.health}.
"""

from __future__ import annotations

import os

import psutil

from inkflow.snapshot import ProcessSnapshot

__all__ = ["ProcessMetrics"]


class ProcessMetrics:
    """
    Reads this process's figures with psutil.
    """

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid or os.getpid())
        self._process.cpu_percent(None)  # prime: the next call measures since now

    def read(self) -> ProcessSnapshot:
        p = self._process
        try:
            with p.oneshot():
                mem = p.memory_info()
                return ProcessSnapshot(
                    memory={"rss_bytes": mem.rss, "vms_bytes": mem.vms, "percent": round(p.memory_percent(), 2)},
                    cpu_percent=round(p.cpu_percent(None), 1),
                    open_files=p.num_fds() if hasattr(p, "num_fds") else len(p.open_files()),
                    threads=p.num_threads(),
                )
        except psutil.Error:
            return ProcessSnapshot(
                memory={"rss_bytes": 0, "vms_bytes": 0, "percent": 0.0}, cpu_percent=0.0, open_files=0, threads=0
            )
