"""
The options table: the fields of L{Settings}, their validation across
options (L{_validated}), the loading by precedence (L{load_settings}) and
what is derived from the table (L{describe}, L{options_table_markdown}).

See L{inkflow.settings} for how an option is defined and added.  Pure: it
reads no environment and no files by itself; the callers at the edge (the
twistd plugin, the .tac) pass them in.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inkflow.n8n.retry import DEFAULT_RETRY_ON, RETRY_ON_CHOICES
from inkflow.page import PageConfig, page_config, page_table
from inkflow.settings.options import ENV_PREFIX, ConfigError, Option, opt, options_of
from inkflow.settings.parsers import (
    auto_or_int_in,
    choice,
    directory,
    field_name,
    flag,
    forward_header,
    header,
    header_name,
    int_in,
    is_tcp_endpoint,
    listen,
    mime,
    network,
    optional_listen,
    origin,
    redis_prefix_option,
    redis_url_option,
    retry_on,
    seconds,
    webhook,
)
from inkflow.settings.urls import redact_url, redacted_redis_url

__all__ = [
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "Settings",
    "default_static_dir",
    "default_upload_dir",
    "describe",
    "load_settings",
    "options_table_markdown",
]


def default_static_dir() -> str:
    """
    The page shipped with InkFlow: C{inkflow/static} in an installed copy,
    C{static/} beside the package in a source checkout.
    """
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return str(candidate)
    return str(here.parent / "static")


def default_upload_dir() -> str:
    """
    A private folder under the system temp folder, one per user (Windows has
    no uid; its temp folder is per user already).
    """
    getuid = getattr(os, "getuid", None)
    return os.path.join(tempfile.gettempdir(), f"inkflow-uploads-{getuid()}" if getuid else "inkflow-uploads")


DEFAULT_ALLOWED_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
)


def _header_name(value: tuple[str, str]) -> str:
    return value[0]


@dataclass(frozen=True)
class Settings:
    """
    Everything InkFlow is configured with, validated.  Build it with
    L{load_settings} (or L{Settings.defaults} plus L{Settings.replace} in tests).

    The fields are the options table, in the order of C{--help} and the README.
    """

    listen: str = opt(
        listen, "tcp:8000:interface=127.0.0.1", "Twisted endpoint string to listen on", metavar="ENDPOINT"
    )
    webhook: tuple[str, ...] = opt(
        webhook,
        (),
        "n8n webhook URL, in failover order (repeatable; env: comma-separated); none = built-in demo responder",
        repeatable=True,
        metavar="URL",
        show=redact_url,
    )
    webhook_header: tuple[tuple[str, str], ...] = opt(
        header,
        (),
        'header sent to n8n, "Name: value" (repeatable); secret: never logged or shown',
        repeatable=True,
        secret=True,
        metavar="HEADER",
        sep="\n",  # a header value may contain commas
        show=_header_name,
    )
    static_dir: str = opt(
        directory, default_static_dir, "folder with the page", metavar="DIR", doc_default="packaged `static/`"
    )
    static_only: bool = opt(flag, False, "serve the page only; /api/chat answers 404 chat_disabled", is_flag=True)
    max_file_size: int = opt(int_in(1), 10 * 1024 * 1024, "bytes per file", metavar="BYTES")
    max_files: int = opt(int_in(0, 100), 5, "files per message", metavar="N")
    max_message_chars: int = opt(int_in(1, 1_000_000), 4000, "characters of text per message", metavar="N")
    allowed_types: tuple[str, ...] = opt(
        mime,
        DEFAULT_ALLOWED_TYPES,
        "allowed file types, checked on the bytes (comma-separated)",
        repeatable=True,
        metavar="TYPES",
    )
    max_connections: int = opt(int_in(1, 100_000), 50, "open client connections", metavar="N")
    max_connections_per_ip: int | None = opt(
        auto_or_int_in(0, 100_000),
        None,
        "open connections from one client address (WebSockets and streams included; keyed like --rate-limit);"
        " auto = a quarter of --max-connections, at least 8; 0 = off",
        metavar="N",
        doc_default="auto (`12` at the default `--max-connections`)",
    )
    max_concurrent: int = opt(int_in(1, 10_000), 10, "chat requests in flight to n8n", metavar="N")
    queue_size: int = opt(int_in(0, 100_000), 20, "chat requests waiting beyond --max-concurrent", metavar="N")
    queue_timeout: float = opt(seconds(0.001, 3600), 30.0, "seconds a request may wait in the queue", metavar="SECONDS")
    attempt_timeout: float = opt(
        seconds(0.001, 3600), 30.0, "seconds for one attempt at one webhook URL", metavar="SECONDS"
    )
    request_timeout: float = opt(
        seconds(0.001, 3600),
        60.0,
        "hard ceiling for a chat request, queue wait and all attempts included",
        metavar="SECONDS",
    )
    stream_idle_timeout: float = opt(
        seconds(0.001, 86400),
        120.0,
        "seconds without a byte from n8n once a streamed answer has started",
        metavar="SECONDS",
    )
    stream_timeout: float = opt(seconds(0.001, 86400), 600.0, "seconds for a whole streamed answer", metavar="SECONDS")
    retries: int = opt(int_in(0, 20), 2, "extra attempts after the first, spread over the URLs", metavar="N")
    retry_on: tuple[str, ...] = opt(
        retry_on,
        DEFAULT_RETRY_ON,
        f"what moves an attempt on: {', '.join(RETRY_ON_CHOICES)} (comma-separated)",
        repeatable=True,
        metavar="LIST",
    )
    rate_limit: int = opt(int_in(0, 1_000_000), 30, "chat requests per client IP per minute (0 = off)", metavar="N")
    trusted_proxy: tuple[str, ...] = opt(
        network,
        (),
        "address, CIDR or unix (a unix: listener's peers) whose X-Forwarded-For is believed (repeatable)",
        repeatable=True,
        metavar="CIDR",
    )
    upload_dir: str = opt(
        directory,
        default_upload_dir,
        "where uploads are spooled",
        metavar="DIR",
        doc_default="`$TMPDIR/inkflow-uploads-<uid>`",
    )
    cors_origin: tuple[str, ...] = opt(
        origin,
        (),
        "allowed browser origin (repeatable); none = same origin only",
        repeatable=True,
        metavar="ORIGIN",
    )
    # --- the @n8n/chat widget's options, idempotency, breaker, WebSocket
    chat_input_key: str = opt(
        field_name,
        "chatInput",
        "field holding the message, in JSON and multipart, and sent to n8n under it (message still accepted)",
        metavar="NAME",
    )
    chat_session_key: str = opt(
        field_name,
        "sessionId",
        "field holding the session id, in JSON and multipart, and sent to n8n under it (sessionId still accepted)",
        metavar="NAME",
    )
    cors_allow_header: tuple[str, ...] = opt(
        header_name,
        (),
        "request header allowed in the CORS preflight besides Content-Type (repeatable)",
        repeatable=True,
        metavar="NAME",
    )
    forward_header: tuple[str, ...] = opt(
        forward_header,
        (),
        "client request header passed on to n8n (repeatable); no other is, Cookie and Authorization only if named",
        repeatable=True,
        metavar="NAME",
    )
    idempotency_ttl: float = opt(
        seconds(0, 86400),
        600.0,
        "seconds a client Idempotency-Key's answer is replayed (0 = only while in flight)",
        metavar="SECONDS",
    )
    breaker_failures: int = opt(
        int_in(1, 10_000), 5, "failures in a row that open a webhook's circuit breaker", metavar="N"
    )
    breaker_cooldown: float = opt(
        seconds(0.001, 86400),
        30.0,
        "seconds an open circuit breaker waits before trying its webhook again",
        metavar="SECONDS",
    )
    websocket_idle_timeout: float = opt(
        seconds(0.001, 86400),
        90.0,
        "seconds a /chat WebSocket may stay without a data frame from the browser (the widget answers n8n's 30 s heartbeat)",
        metavar="SECONDS",
    )
    websocket_max_message: int = opt(
        int_in(0, 1024 * 1024 * 1024),
        0,
        "bytes of one /chat WebSocket message, either way; 0 = room for --max-files files of --max-file-size"
        " as the widget sends them (base64 in JSON)",
        metavar="BYTES",
    )
    header_timeout: float = opt(seconds(0.001, 3600), 10.0, "seconds to receive request headers", metavar="SECONDS")
    idle_timeout: float = opt(
        seconds(0.001, 86400), 60.0, "seconds a keep-alive connection may stay idle", metavar="SECONDS"
    )
    body_timeout: float = opt(
        seconds(0.001, 3600), 10.0, "seconds without a request-body byte before 408 and close", metavar="SECONDS"
    )
    write_timeout: float = opt(
        seconds(0.001, 3600),
        30.0,
        "seconds without the client reading its answer before the connection is aborted",
        metavar="SECONDS",
    )
    admin_listen: str = opt(
        optional_listen,
        "",
        "endpoint for /metrics and the full health; the public /api/health then says only its status",
        metavar="ENDPOINT",
    )
    shutdown_delay: float = opt(
        seconds(0, 3600),
        0.0,
        "seconds to keep serving, not ready, before closing the port on shutdown (for load balancers)",
        metavar="SECONDS",
    )
    drain_timeout: float = opt(
        seconds(0, 3600), 25.0, "seconds to finish in-flight work on shutdown", metavar="SECONDS"
    )
    cleanup_interval: float = opt(
        seconds(0.01, 86400), 300.0, "seconds between memory / temp-file cleanups", metavar="SECONDS"
    )
    log_format: str = opt(choice("text", "json"), "text", "text or json", metavar="FORMAT")
    log_level: str = opt(
        choice("debug", "info", "warn", "error", "critical"), "info", "lowest level logged", metavar="LEVEL"
    )
    access_log: bool = opt(flag, True, "log one line per request (false to turn off)", metavar="BOOL")
    workers: int = opt(int_in(1, 64), 1, "processes sharing the listening socket", metavar="N")
    # --- shared state across processes and instances (issue 20)
    redis: str = opt(
        redis_url_option,
        "",
        "Redis (or Valkey) shared by every process of every instance: Idempotency-Keys, rate limit, executions"
        " (redis://host:port/db, rediss://..., unix:///path); none = per server",
        metavar="URL",
        show=redacted_redis_url,
    )
    redis_prefix: str = opt(
        redis_prefix_option, "inkflow:", "prefix of every key InkFlow writes in --redis", metavar="PREFIX"
    )
    #: Not an option: the config file's [page] table and INKFLOW_PAGE_* (L{inkflow.page}).
    page: PageConfig = field(default_factory=PageConfig)

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

    @property
    def connections_per_ip(self) -> int:
        """
        The open connections one client address may hold (0 = no limit):
        C{--max-connections-per-ip}, or when auto, a quarter of
        C{--max-connections} but at least 8 (a browser opens up to 6
        connections to a host, plus the /chat WebSocket and a stream), never
        above C{--max-connections}.  A quarter: at least four addresses are
        needed to fill every place, while an office or a carrier NAT behind
        one address still gets a fair share.
        """
        if self.max_connections_per_ip is not None:
            return self.max_connections_per_ip
        return min(self.max_connections, max(8, self.max_connections // 4))

    @property
    def websocket_message_limit(self) -> int:
        """
        The largest /chat WebSocket message: C{--websocket-max-message}, or
        when 0, room for every file at its limit as @n8n/chat sends files
        over the socket (data URLs, base64, inside one JSON message).
        """
        if self.websocket_max_message:
            return self.websocket_max_message
        return self.max_files * self.max_file_size * 4 // 3 + self.max_message_chars * 4 + 1024 * 1024

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


#: The options, derived from the fields of L{Settings}, in their order.
OPTIONS: tuple[Option, ...] = options_of(Settings)

OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def _parse_raw(option: Option, raw: Any, source: str) -> Any:
    """
    Parse one raw value (from a flag, the environment or TOML) for C{option}.
    """
    where = (
        f"--{option.name}" if source == "flag" else (option.env if source == "env" else f"{option.name} (config file)")
    )
    try:
        if not option.repeatable:
            return option.parse(raw)
        items: list[Any] = []
        for item in raw if isinstance(raw, (list, tuple)) else [raw]:
            if isinstance(item, str):
                items.extend(part for part in item.split(option.sep) if part.strip())
            else:
                items.append(item)
        return tuple(dict.fromkeys(option.parse(item) for item in items))
    except ValueError as e:
        raise ConfigError(f"invalid value for {where}: {e}") from None


def _validated(values: dict[str, Any]) -> Settings:
    """
    Check what only makes sense across options, then freeze.
    """
    for option in OPTIONS:
        if option.repeatable:  # overrides may be lists
            values[option.attr] = tuple(values[option.attr])
    if values["request_timeout"] < values["attempt_timeout"] and values["webhook"]:
        # Allowed, but the attempt timeout can never be reached; clamp quietly.
        values["attempt_timeout"] = values["request_timeout"]
    if values["max_files"] and not values["allowed_types"]:
        raise ConfigError("invalid value for --allowed-types: at least one type is needed while --max-files > 0")
    if values["chat_input_key"] == values["chat_session_key"]:
        raise ConfigError("invalid value for --chat-session-key: it must differ from --chat-input-key")
    if values["workers"] > 1 and values["admin_listen"]:
        raise ConfigError("invalid value for --admin-listen: not with --workers > 1 (each worker would need its own)")
    if values["workers"] > 1 and not is_tcp_endpoint(values["listen"]):
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
    page_values = None
    if path:
        file_values, page_values = _read_toml(path)

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
    values["page"] = load_page(page_values, environ)
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = value
    return _validated(values)


def load_page(table: Mapping[str, Any] | None, environ: Mapping[str, str]) -> PageConfig:
    """
    The C{[page]} table (L{inkflow.page}) from the config file's table and
    C{INKFLOW_PAGE_*}.

    @raise ConfigError: one line naming the key.
    """
    try:
        return page_config(table, environ)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _read_toml(path: str) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
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
        if key == "page" and section is data:
            continue  # the [page] table (inkflow.page)
        name = key.replace("_", "-")
        if name not in OPTIONS_BY_NAME:
            raise ConfigError(f"invalid value for --config: unknown key {key!r} in {path!r}")
        result[name] = value
    try:
        return result, page_table(data, path)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _doc_default(option: Option) -> str:
    if option.doc_default is not None:
        return option.doc_default
    default = option.default_value()
    if isinstance(default, tuple):
        return f"`{','.join(default)}`" if default else "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if default == "":
        return "none"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def options_table_markdown() -> str:
    """
    The options table for the README, generated from L{OPTIONS}.
    """
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        flag_text = f"`--{option.name}`" + (f" {option.metavar}" if option.metavar else "")
        rows.append(f"| {flag_text} | `{option.env}` | {_doc_default(option)} | {option.help} |")
    return "\n".join(rows)


def describe(settings: Settings) -> dict[str, Any]:
    """
    The settings fit to log or show, keyed by option name: secrets hidden,
    URLs redacted, tuples as lists.
    """
    shown: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(settings, option.attr)
        if option.secret and option.show is None:
            value = "<hidden>"
        elif option.repeatable:
            value = [option.show(item) if option.show else item for item in value]
        elif option.show is not None:
            value = option.show(value)
        shown[option.name] = value
    return shown
