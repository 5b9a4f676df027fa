"""
The twistd face of InkFlow: command-line options built from the one options
table (the fields of L{inkflow.settings.Settings}, as
L{inkflow.settings.OPTIONS}), turned into L{Settings}.

A bad flag or value prints one line and exits with status 2: twistd would
otherwise print its whole usage text, or a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from inkflow.server import logs, startup
from inkflow.settings import OPTIONS, ConfigError, Option, Settings, load_settings

__all__ = ["Options", "makeService"]


def _repeatable(option: Option) -> Any:
    def opt(self: _OptionsBase, value: str) -> None:
        self.setdefault(option.name, []).append(value)

    opt.__doc__ = option.help
    return opt


class _OptionsBase(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "InkFlow: a Hebrew landing page with a chat that forwards to n8n.  Every option can also be set by an "
        "environment variable INKFLOW_<OPTION> or a key in the TOML file given by --config "
        "(precedence: flag > environment > file > default)."
    )

    optParameters: ClassVar[list[list[Any]]] = [["config", None, None, "TOML file with settings (env: INKFLOW_CONFIG)"]]
    optFlags: ClassVar[list[list[Any]]] = []

    settings: Settings

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if isinstance(e, _Handled):
                raise SystemExit(2) from None
            sys.stderr.write(f"inkflow: error: {e} (see: twistd inkflow --help)\n")
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        flags = dict(self)
        for option in OPTIONS:
            if option.is_flag:
                # usage.Options stores 0 for an absent flag; absent must mean
                # "not given" so the environment and the file can still set it.
                flags[option.name] = True if flags.get(option.name) else None
        try:
            self.settings = load_settings(flags=flags, environ=os.environ, config_file=self.get("config"))
        except ConfigError as e:
            sys.stderr.write(f"inkflow: error: {e}\n")
            raise _Handled(str(e)) from None
        problem = startup.unsupported(self.settings)
        if problem is not None:
            sys.stderr.write(f"inkflow: error: {problem}\n")
            raise _Handled(problem)
        parent = getattr(self, "parent", None)
        if parent is not None:
            logs.set_up(self.settings, twistd_options=parent)
            startup.use_twistd_options(parent)


class _Handled(usage.UsageError):
    """
    Already reported on stderr.
    """


def _build_options_class() -> type[usage.Options]:
    namespace: dict[str, Any] = {
        "optParameters": list(_OptionsBase.optParameters),
        "optFlags": [],
    }
    for option in OPTIONS:
        if option.is_flag:
            namespace["optFlags"].append([option.name, None, option.help + f" (env: {option.env})"])
        elif option.repeatable:
            namespace["opt_" + option.attr] = _repeatable(option)
        else:
            namespace["optParameters"].append([option.name, None, None, option.help + f" (env: {option.env})"])
    return type("Options", (_OptionsBase,), namespace)


Options = _build_options_class()


def makeService(options: usage.Options) -> IService:
    from twisted.internet import reactor

    from inkflow.server.service import makeService as make

    # A port in use and the like: one line and status 2; under systemd, READY=1 and WATCHDOG=1
    # (inkflow.server.startup, inkflow.server.systemd).
    return startup.guarded(make(options.settings, reactor), reactor)  # type: ignore[attr-defined]
