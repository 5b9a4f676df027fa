"""
InkFlow's settings: one frozen, validated object, and the one table of options.

Every option has a command-line flag, an environment variable
(``INKFLOW_<FLAG IN UPPER SNAKE CASE>``) and a key in an optional TOML file
(``--config FILE``).  Precedence: flag > environment > file > default.

This module is pure: it reads no environment and no files by itself; the
callers at the edge (the twistd plugin, the .tac) pass them in.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.endpoints import _parseServer

__all__ = [
    "OPTIONS",
    "ConfigError",
    "Option",
    "Settings",
    "default_static_dir",
    "default_upload_dir",
    "load_settings",
]

ENV_PREFIX = "INKFLOW_"


class ConfigError(ValueError):
    """
    An option has an invalid value.  The message is one line naming the option.
    """


# --- value parsers: each takes a string (or a TOML value) and returns the value,
# --- or raises ValueError with a short reason.


def _int_in(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        if isinstance(value, int):
            number = value
        else:
            text = str(value).strip().replace("_", "")
            if not re.fullmatch(r"[+-]?\d+", text):
                raise ValueError(f"expected an integer, got {value!r}")
            number = int(text)
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}, got {number}")
        return number

    return parse


def _seconds(low: float, high: float | None = None) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number of seconds")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        if number < low or (high is not None and number > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise ValueError(f"must be {bound}, got {number:g}")
        return number

    return parse


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _listen(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    try:
        _parseServer(text, None)
    except Exception as e:  # Twisted raises several types here
        raise ValueError(f"not a valid Twisted endpoint: {text!r} ({e})") from None
    return text


def _webhook(value: Any) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {redact_url(text)!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"bad port in {redact_url(text)!r}") from None
    return text


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FORBIDDEN_UPSTREAM_HEADERS = {
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "x-request-id",
    "idempotency-key",
}


def _header(value: Any) -> tuple[str, str]:
    text = str(value)
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name):
        # Never echo the value: it is usually a secret.
        raise ValueError('expected "Name: value"')
    if name.lower() in _FORBIDDEN_UPSTREAM_HEADERS:
        raise ValueError(f"header {name!r} is set by InkFlow itself")
    rest = rest.strip()
    if any(c in rest for c in "\r\n\0"):
        raise ValueError(f"value of header {name!r} contains a control character")
    return (name, rest)


_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


def _mime(value: Any) -> str:
    text = str(value).strip().lower()
    if not _MIME.match(text):
        raise ValueError(f"not a media type: {text!r}")
    return text


RETRY_ON_CHOICES = ("connect", "timeout", "404", "429", "500", "502", "503", "504")


def _retry_on(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in RETRY_ON_CHOICES:
        raise ValueError(f"expected one of {', '.join(RETRY_ON_CHOICES)}, got {text!r}")
    return text


def _network(value: Any) -> str:
    text = str(value).strip()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"not an address or CIDR: {text!r}") from None


def _origin(value: Any) -> str:
    text = str(value).strip().rstrip("/")
    parts = urlsplit(text)
    if text == "*":
        raise ValueError("'*' is not allowed; list the origins")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ValueError(f"expected an origin like https://example.com, got {text!r}")
    return text.lower()


def _directory(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return os.path.abspath(os.path.expanduser(text))


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _text(value: Any) -> str:
    return str(value)


@dataclass(frozen=True)
class Option:
    """
    One row of the options table.

    @ivar name: the flag without dashes, e.g. C{"max-file-size"}.
    @ivar parse: turns one raw value into the typed value (raises ValueError).
    @ivar default: the typed default (a tuple for repeatable options), or a
        zero-argument callable producing it.
    @ivar repeatable: given several times on the command line; comma-separated
        in the environment; a list in TOML.
    @ivar secret: never shown in errors or logs.
    @ivar metavar: shown in --help.
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    repeatable: bool = False
    secret: bool = False
    is_flag: bool = False
    metavar: str = ""

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace("-", "_").upper()

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default


def default_static_dir() -> str:
    """
    The page shipped with InkFlow: C{inkflow/static} in an installed copy,
    C{static/} beside the package in a source checkout.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return str(candidate)
    return str(here.parent / "static")


def default_upload_dir() -> str:
    """
    A private folder under the system temp folder, one per user.
    """
    return os.path.join(tempfile.gettempdir(), f"inkflow-uploads-{os.getuid()}")


DEFAULT_ALLOWED_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
)

DEFAULT_RETRY_ON = ("connect", "404", "429", "502", "503", "504")

#: The one table of options.  The README's table is generated from it
#: (C{python -m inkflow.settings}).
OPTIONS: tuple[Option, ...] = (
    Option(
        "listen", _listen, "tcp:8000:interface=127.0.0.1", "Twisted endpoint string to listen on", metavar="ENDPOINT"
    ),
    Option(
        "webhook",
        _webhook,
        (),
        "n8n webhook URL, in failover order (repeatable; env: comma-separated); none = built-in demo responder",
        repeatable=True,
        metavar="URL",
    ),
    Option(
        "webhook-header",
        _header,
        (),
        'header sent to n8n, "Name: value" (repeatable); secret: never logged or shown',
        repeatable=True,
        secret=True,
        metavar="HEADER",
    ),
    Option("static-dir", _directory, default_static_dir, "folder with the page", metavar="DIR"),
    Option("static-only", _flag, False, "serve the page only; /api/chat answers 404 chat_disabled", is_flag=True),
    Option("max-file-size", _int_in(1), 10 * 1024 * 1024, "bytes per file", metavar="BYTES"),
    Option("max-files", _int_in(0, 100), 5, "files per message", metavar="N"),
    Option("max-message-chars", _int_in(1, 1_000_000), 4000, "characters of text per message", metavar="N"),
    Option(
        "allowed-types",
        _mime,
        DEFAULT_ALLOWED_TYPES,
        "allowed file types, checked on the bytes (comma-separated)",
        repeatable=True,
        metavar="TYPES",
    ),
    Option("max-connections", _int_in(1, 100_000), 50, "open client connections", metavar="N"),
    Option("max-concurrent", _int_in(1, 10_000), 10, "chat requests in flight to n8n", metavar="N"),
    Option("queue-size", _int_in(0, 100_000), 20, "chat requests waiting beyond --max-concurrent", metavar="N"),
    Option("queue-timeout", _seconds(0.001, 3600), 30.0, "seconds a request may wait in the queue", metavar="SECONDS"),
    Option(
        "attempt-timeout", _seconds(0.001, 3600), 30.0, "seconds for one attempt at one webhook URL", metavar="SECONDS"
    ),
    Option(
        "request-timeout",
        _seconds(0.001, 3600),
        60.0,
        "hard ceiling for a chat request, queue wait and all attempts included",
        metavar="SECONDS",
    ),
    Option(
        "stream-idle-timeout",
        _seconds(0.001, 86400),
        120.0,
        "seconds without a byte from n8n once a streamed answer has started",
        metavar="SECONDS",
    ),
    Option("stream-timeout", _seconds(0.001, 86400), 600.0, "seconds for a whole streamed answer", metavar="SECONDS"),
    Option("retries", _int_in(0, 20), 2, "extra attempts after the first, spread over the URLs", metavar="N"),
    Option(
        "retry-on",
        _retry_on,
        DEFAULT_RETRY_ON,
        "what moves an attempt on: connect, timeout, 404, 429, 500, 502, 503, 504 (comma-separated)",
        repeatable=True,
        metavar="LIST",
    ),
    Option("rate-limit", _int_in(0, 1_000_000), 30, "chat requests per client IP per minute (0 = off)", metavar="N"),
    Option(
        "trusted-proxy",
        _network,
        (),
        "address or CIDR whose X-Forwarded-For is believed (repeatable)",
        repeatable=True,
        metavar="CIDR",
    ),
    Option("upload-dir", _directory, default_upload_dir, "where uploads are spooled", metavar="DIR"),
    Option(
        "cors-origin",
        _origin,
        (),
        "allowed browser origin (repeatable); none = same origin only",
        repeatable=True,
        metavar="ORIGIN",
    ),
    Option("header-timeout", _seconds(0.001, 3600), 10.0, "seconds to receive request headers", metavar="SECONDS"),
    Option(
        "idle-timeout", _seconds(0.001, 86400), 60.0, "seconds a keep-alive connection may stay idle", metavar="SECONDS"
    ),
    Option(
        "shutdown-delay",
        _seconds(0, 3600),
        0.0,
        "seconds to keep serving, not ready, before closing the port on shutdown (for load balancers)",
        metavar="SECONDS",
    ),
    Option("drain-timeout", _seconds(0, 3600), 25.0, "seconds to finish in-flight work on shutdown", metavar="SECONDS"),
    Option(
        "cleanup-interval",
        _seconds(0.01, 86400),
        300.0,
        "seconds between memory / temp-file cleanups",
        metavar="SECONDS",
    ),
    Option("log-format", _choice("text", "json"), "text", "text or json", metavar="FORMAT"),
    Option(
        "log-level",
        _choice("debug", "info", "warn", "error", "critical"),
        "info",
        "lowest level logged",
        metavar="LEVEL",
    ),
    Option("access-log", _flag, True, "log one line per request (false to turn off)", metavar="BOOL"),
    Option("workers", _int_in(1, 64), 1, "processes sharing the listening socket", metavar="N"),
)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """
    Everything InkFlow is configured with, validated.  Build it with
    L{load_settings} (or L{Settings.defaults} plus L{Settings.replace} in tests).
    """

    listen: str
    webhook: tuple[str, ...]
    webhook_header: tuple[tuple[str, str], ...] = field(repr=False)
    static_dir: str
    static_only: bool
    max_file_size: int
    max_files: int
    max_message_chars: int
    allowed_types: tuple[str, ...]
    max_connections: int
    max_concurrent: int
    queue_size: int
    queue_timeout: float
    attempt_timeout: float
    request_timeout: float
    stream_idle_timeout: float
    stream_timeout: float
    retries: int
    retry_on: tuple[str, ...]
    rate_limit: int
    trusted_proxy: tuple[str, ...]
    upload_dir: str
    cors_origin: tuple[str, ...]
    header_timeout: float
    idle_timeout: float
    shutdown_delay: float
    drain_timeout: float
    cleanup_interval: float
    log_format: str
    log_level: str
    access_log: bool
    workers: int

    @property
    def mode(self) -> str:
        """
        C{"static-only"}, C{"demo"} (no webhook configured) or C{"proxy"}.
        """
        if self.static_only:
            return "static-only"
        return "proxy" if self.webhook else "demo"

    @property
    def max_body_size(self) -> int:
        """
        The largest request body accepted on /api/chat: every file at its
        limit plus room for the text fields and multipart framing.
        """
        return self.max_files * self.max_file_size + self.max_message_chars * 4 + 64 * 1024

    @classmethod
    def defaults(cls, **overrides: Any) -> Settings:
        """
        The defaults, with keyword overrides (already typed), validated.
        """
        return load_settings(overrides=overrides)

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return _validated(values)


def redact_url(url: str) -> str:
    """
    A webhook URL fit to show: no credentials, no query string, no fragment.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}:{port}{parts.path or '/'}"


def _parse_raw(option: Option, raw: Any, source: str) -> Any:
    """
    Parse one raw value (from a flag, the environment or TOML) for C{option}.
    """
    where = (
        f"--{option.name}" if source == "flag" else (option.env if source == "env" else f"{option.name} (config file)")
    )
    try:
        if option.repeatable:
            items: list[Any]
            if isinstance(raw, (list, tuple)):
                items = []
                for item in raw:
                    # Comma lists are split for list-like options, but never for
                    # headers: a header value may contain commas.
                    if option.name != "webhook-header" and isinstance(item, str):
                        items.extend(p for p in item.split(",") if p.strip())
                    else:
                        items.append(item)
            elif option.name == "webhook-header" and source == "env":
                # Several headers in one variable are separated by newlines.
                items = [line for line in str(raw).splitlines() if line.strip()]
            elif isinstance(raw, str):
                items = [p for p in raw.split(",") if p.strip()]
            else:
                items = [raw]
            return tuple(dict.fromkeys(option.parse(item) for item in items))
        return option.parse(raw)
    except ValueError as e:
        raise ConfigError(f"invalid value for {where}: {e}") from None


def _validated(values: dict[str, Any]) -> Settings:
    """
    Check what only makes sense across options, then freeze.
    """
    if values["request_timeout"] < values["attempt_timeout"] and values["webhook"]:
        # Allowed, but the attempt timeout can never be reached; clamp quietly.
        values["attempt_timeout"] = values["request_timeout"]
    if values["max_files"] and not values["allowed_types"]:
        raise ConfigError("invalid value for --allowed-types: at least one type is needed while --max-files > 0")
    if not values["retry_on"]:
        values["retry_on"] = ()
    if values["workers"] > 1 and _parseServer(values["listen"], None)[0] != "TCP":
        raise ConfigError("invalid value for --workers: more than one worker needs a tcp: --listen endpoint")
    return Settings(**values)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """
    Build the settings from every source, by precedence
    flag > environment > file > default.

    @param flags: raw values given on the command line, keyed by option name
        (C{"max-file-size"}); repeatable options map to lists.
    @param environ: the environment (only C{INKFLOW_*} is read).
    @param config_file: a TOML file; when C{None}, C{INKFLOW_CONFIG} in
        C{environ} names one.
    @param overrides: already-typed values keyed by attribute name, applied
        last (for tests and the .tac).
    @raise ConfigError: one line naming the bad option.
    """
    flags = dict(flags or {})
    environ = environ or {}
    file_values: dict[str, Any] = {}
    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        file_values = _read_toml(path)

    values: dict[str, Any] = {}
    for option in OPTIONS:
        if flags.get(option.name) not in (None, [], ()):
            values[option.attr] = _parse_raw(option, flags[option.name], "flag")
        elif option.env in environ:
            values[option.attr] = _parse_raw(option, environ[option.env], "env")
        elif option.name in file_values:
            values[option.attr] = _parse_raw(option, file_values[option.name], "file")
        else:
            values[option.attr] = option.default_value()
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = value
    return _validated(values)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"invalid value for --config: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid value for --config: {path!r} is not valid TOML: {e}") from None
    section = data.get("inkflow", data)
    if not isinstance(section, dict):
        raise ConfigError(f"invalid value for --config: [inkflow] in {path!r} is not a table")
    result: dict[str, Any] = {}
    for key, value in section.items():
        name = key.replace("_", "-")
        if name not in OPTIONS_BY_NAME:
            raise ConfigError(f"invalid value for --config: unknown key {key!r} in {path!r}")
        result[name] = value
    return result


def options_table_markdown() -> str:
    """
    The options table for the README, generated from L{OPTIONS}.
    """
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        default = option.default_value()
        if option.name in ("static-dir", "upload-dir"):
            shown = "packaged `static/`" if option.name == "static-dir" else "`$TMPDIR/inkflow-uploads-<uid>`"
        elif isinstance(default, tuple):
            shown = f"`{','.join(default)}`" if default else "none"
        elif isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = f"`{default:g}`" if isinstance(default, float) else f"`{default}`"
        flag = f"`--{option.name}`" + (f" {option.metavar}" if option.metavar else "")
        rows.append(f"| {flag} | `{option.env}` | {shown} | {option.help} |")
    return "\n".join(rows)


def describe(settings: Settings) -> dict[str, Any]:
    """
    The settings fit to log or show: secrets removed, URLs redacted.
    """
    shown: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(settings, option.attr)
        if option.secret:
            value = [name for name, _ in value]
        elif option.name == "webhook":
            value = [redact_url(u) for u in value]
        elif isinstance(value, tuple):
            value = list(value)
        shown[option.name] = value
    return shown


def settings_from_argv_values(values: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """
    Shorthand used by the twistd plugin: C{values} holds the parsed flags,
    plus C{"config"}.
    """
    flags = {k: v for k, v in values.items() if k in OPTIONS_BY_NAME}
    return load_settings(flags=flags, environ=environ, config_file=values.get("config"))


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(options_table_markdown())
