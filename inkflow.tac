# twistd -ny inkflow.tac: the same service as `twistd -n inkflow`, configured only by
# INKFLOW_* environment variables and the TOML file named by INKFLOW_CONFIG.
import os
import sys

from twisted.application import service
from twisted.internet import reactor

from inkflow.server import logs, startup
from inkflow.server.service import makeService
from inkflow.settings import ConfigError, load_settings

try:
    settings = load_settings(environ=os.environ)
except ConfigError as e:
    sys.stderr.write(f"inkflow: error: {e}\n")
    raise SystemExit(2) from None
if (problem := startup.unsupported(settings)) is not None:
    sys.stderr.write(f"inkflow: error: {problem}\n")
    raise SystemExit(2)

application = service.Application("inkflow")
logs.set_up(settings, application=application)
# A port in use and the like: one line and status 2; under systemd, READY=1 and WATCHDOG=1.
startup.guarded(makeService(settings, reactor), reactor).setServiceParent(application)
