"""
One timer for many coarse deadlines: L{Sweep}.

Two thousand streams each holding their own C{callLater} (set at the commit,
cancelled at the end) cost the reactor a heap insertion and a cancellation
per stream; their deadlines (20 s keepalive, idle and whole-stream timeouts)
need no better than a fraction of a second.  A sweep keeps the deadlines in
slots of C{resolution} seconds and holds one reactor timer, for its earliest
slot; when a slot is due it calls C{swept()} on every entry in it, and each
entry checks its own deadlines and schedules itself again.

A deadline is met at the end of its slot: at most C{resolution} late, never
early.  Pure but for the injected clock.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["Sweep", "Swept", "resolution_for"]

log = Logger()


class Swept(Protocol):
    """
    What a sweep calls when an entry's slot is due.
    """

    def swept(self) -> None: ...


def resolution_for(*deadlines: float, coarsest: float = 1.0) -> float:
    """
    A slot width for these deadlines: a tenth of the shortest, at most
    C{coarsest} seconds (so a short deadline set in tests or by an operator
    is still met within 10 %).
    """
    shortest = min((d for d in deadlines if d > 0), default=coarsest * 10)
    return min(coarsest, shortest / 10)


class Sweep:
    """
    Coarse deadlines for many entries on one reactor timer.

    @ivar resolution: the slot width in seconds.
    """

    def __init__(self, clock: IReactorTime, resolution: float = 1.0) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self.clock = clock
        self.resolution = resolution
        self._slots: dict[int, dict[Swept, None]] = {}
        self._slot_of: dict[Swept, int] = {}
        self._order: list[int] = []  # a heap of the slots in _slots
        self._timer: IDelayedCall | None = None
        self._timer_slot: int | None = None
        self._firing: int | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def schedule(self, entry: Swept, due: float) -> None:
        """
        Call C{entry.swept()} at C{due} or up to one slot after it.  An entry
        already due earlier keeps its earlier slot (it reschedules itself
        when swept); one due later is moved.
        """
        slot = math.ceil(due / self.resolution)
        if self._firing is not None and slot <= self._firing:
            slot = self._firing + 1
        current = self._slot_of.get(entry)
        if current is not None:
            if current <= slot:
                return
            self._remove(entry, current)
        self._slot_of[entry] = slot
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = {}
            heapq.heappush(self._order, slot)
        members[entry] = None
        if self._firing is None and (self._timer_slot is None or slot < self._timer_slot):
            self._arm(slot)

    def cancel(self, entry: Swept) -> None:
        """
        Forget C{entry} (nothing if it is not scheduled).  The reactor timer
        stays armed while other entries wait (a slot found empty is skipped)
        and is cancelled with the last one.
        """
        slot = self._slot_of.get(entry)
        if slot is not None:
            self._remove(entry, slot)
            if not self._slot_of and self._firing is None:
                self._order.clear()
                if self._timer is not None and self._timer.active():
                    self._timer.cancel()
                self._timer = self._timer_slot = None

    def _remove(self, entry: Swept, slot: int) -> None:
        del self._slot_of[entry]
        members = self._slots[slot]
        del members[entry]
        if not members:
            del self._slots[slot]  # its heap entry is dropped when reached

    def _arm(self, slot: int) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_slot = slot
        delay = max(0.0, slot * self.resolution - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_slot = None
        now = self.clock.seconds()
        # The slot whose end is now (a hair of float slack: a slot's end is
        # computed as slot * resolution, the timer's delay from it).
        reached = math.floor(now / self.resolution + 1e-9)
        order = self._order
        while order and order[0] <= reached:
            slot = heapq.heappop(order)
            members = self._slots.pop(slot, None)
            if not members:
                continue
            self._firing = slot
            try:
                for entry in members:
                    del self._slot_of[entry]
                for entry in members:
                    try:
                        entry.swept()
                    except Exception:
                        log.failure("A swept deadline failed")
            finally:
                self._firing = None
        while order and order[0] not in self._slots:
            heapq.heappop(order)
        if order:
            self._arm(order[0])
