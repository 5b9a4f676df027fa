"""
C{--workers N}, one worker's side: C{python -m inkflow.server.worker}.

Started by L{inkflow.server.workers.WorkerSupervisor}: the settings come in
the environment (loaded and validated as at start-up), the listening socket is
file descriptor 3 (served through C{AdoptedStreamServerEndpoint}), the
parent's state socket and this worker's slot in the environment too, and the
log goes to stdout as JSON lines, for the parent to relay.

Only this entry point imports L{inkflow.server.service}; nothing imports this
module, so running it with C{-m} loads it once.
"""

from __future__ import annotations

import os
import sys

from twisted.internet.interfaces import IReactorCore

from inkflow.server.logs import begin_worker_logging
from inkflow.server.service import makeService
from inkflow.server.workers import SETTINGS_ENV, SLOT_ENV, STATE_SOCKET_ENV, WORKER_FD, settings_from_env
from inkflow.settings import ConfigError

__all__ = ["main"]


def main() -> int:  # pragma: no cover - runs in a worker process
    """
    Serve until SIGTERM / SIGINT; the exit status (2 for settings that do not
    load).
    """
    from twisted.internet import reactor as _reactor

    try:
        settings = settings_from_env(os.environ.pop(SETTINGS_ENV))
    except (KeyError, ConfigError) as e:
        sys.stderr.write(f"inkflow worker: error: {e}\n")
        return 2
    begin_worker_logging(settings.log_level)
    reactor = IReactorCore(_reactor)
    top = makeService(
        settings,
        reactor,
        worker_fd=WORKER_FD,
        state_socket=os.environ.pop(STATE_SOCKET_ENV, None),
        worker_slot=os.environ.pop(SLOT_ENV, ""),
    )
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
