"""
The machinery of InkFlow's options table: an option is a dataclass field
made by L{opt}, whose metadata (an L{Option}) carries its parsing, help,
repeatability, separator and secrecy.  L{options_of} reads them back in
field order.  The table itself is L{inkflow.settings.table.Settings}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from dataclasses import replace as _replace
from typing import Any

__all__ = ["ENV_PREFIX", "ConfigError", "Option", "opt", "options_of"]

ENV_PREFIX = "INKFLOW_"

_METADATA_KEY = "inkflow.option"


class ConfigError(ValueError):
    """
    An option has an invalid value.  The message is one line naming the option.
    """


@dataclass(frozen=True)
class Option:
    """
    One option: what C{opt(...)} put in a L{Settings} field, plus the field's
    name.

    @ivar parse: turns one raw value into the typed value (raises ValueError).
    @ivar default: the typed default (a tuple for repeatable options), or a
        zero-argument callable producing it.
    @ivar repeatable: given several times on the command line; several values
        in one string are separated by C{sep}; a list in TOML.
    @ivar secret: never shown in errors, logs or the repr (L{describe} shows
        C{show(value)} of each value, or hides it).
    @ivar is_flag: a command-line switch without a value.
    @ivar metavar: shown in --help and the README.
    @ivar sep: the separator of several values in one string.
    @ivar show: what L{describe} shows of one value (default: the value).
    @ivar doc_default: the default as the README shows it (default: derived
        from C{default}).
    @ivar attr: the L{Settings} field name, e.g. C{"max_file_size"}.
    """

    parse: Callable[[Any], Any]
    default: Any
    help: str
    repeatable: bool = False
    secret: bool = False
    is_flag: bool = False
    metavar: str = ""
    sep: str = ","
    show: Callable[[Any], Any] | None = None
    doc_default: str | None = None
    attr: str = ""

    @property
    def name(self) -> str:
        """
        The flag without dashes, e.g. C{"max-file-size"}; also the TOML key.
        """
        return self.attr.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


def opt(
    parse: Callable[[Any], Any],
    default: Any,
    help: str,
    *,
    repeatable: bool = False,
    secret: bool = False,
    is_flag: bool = False,
    metavar: str = "",
    sep: str = ",",
    show: Callable[[Any], Any] | None = None,
    doc_default: str | None = None,
) -> Any:
    """
    A L{Settings} field that is an option (see L{Option} for the arguments).
    """
    option = Option(parse, default, help, repeatable, secret, is_flag, metavar, sep, show, doc_default)
    metadata = {_METADATA_KEY: option}
    if callable(default):
        return field(default_factory=default, repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


def options_of(cls: type[Any]) -> tuple[Option, ...]:
    """
    The options of a dataclass: its C{opt(...)} fields, in their order.
    """
    return tuple(_replace(f.metadata[_METADATA_KEY], attr=f.name) for f in fields(cls) if _METADATA_KEY in f.metadata)
