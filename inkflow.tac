# twistd -ny inkflow.tac: the same service as `twistd -n inkflow`, configured only by
# INKFLOW_* environment variables and the TOML file named by INKFLOW_CONFIG.
import os
import sys

from twisted.application import service

from inkflow.server.service import makeService
from inkflow.settings import ConfigError, load_settings

try:
    settings = load_settings(environ=os.environ)
except ConfigError as e:
    sys.stderr.write(f"inkflow: error: {e}\n")
    raise SystemExit(2) from None

application = service.Application("inkflow")
if settings.log_format == "json" or settings.log_level != "info":
    # InkFlow's observer on stdout; otherwise twistd's own observer (and --logfile) apply.
    from twisted.logger import ILogObserver

    from inkflow.server.logs import make_observer

    application.setComponent(ILogObserver, make_observer(settings.log_format, level=settings.log_level))
makeService(settings).setServiceParent(application)
