"""
InkFlow's settings: one frozen, validated object whose fields are the one
table of options.

Every field of L{Settings} is an option.  Its C{opt(...)} carries everything
about it; the rest is derived from the field:

  - the flag is the field name with dashes (C{max_file_size} ->
    C{--max-file-size}), the environment variable C{INKFLOW_<FIELD IN UPPER
    CASE>}, the TOML key the flag name (or the field name);
  - twistd's C{--help} (L{inkflow.server.tap}), L{describe} (what is logged;
    secrets hidden) and the README's options table (C{python -m
    inkflow.settings}) are generated from the fields, in their order.

Precedence: flag > environment > file > default.  A bad value stops start-up
with one line naming the option (L{ConfigError}).

The rooms:

  - L{inkflow.settings.table}: the table (the fields of L{Settings}), the
    checks across options, loading, L{describe} and the README table;
  - L{inkflow.settings.options}: the machinery (L{opt}, L{Option},
    L{options_of}, L{ConfigError});
  - L{inkflow.settings.parsers}: one parser per kind of value;
  - L{inkflow.settings.urls}: webhook URLs fit to show (L{redact_url},
    L{origin_url}) and the C{--redis} URL, parsed and redacted.

Adding an option is adding one field to the table: C{opt(parse, default,
help, ...)} with a parser from L{inkflow.settings.parsers}.  A repeatable
option's field is a tuple and its default a tuple; a default that must be
computed is a zero-argument callable.  The field's place is its place in
C{--help} and the README; paste the new table (C{python -m inkflow.settings})
into the README, which a test checks.  Checks across options belong in
C{table._validated}.

Pure: no environment, no files, no reactor.  Imports only
L{inkflow.n8n.retry} (the C{--retry-on} vocabulary, which is the retry
policy's), never the server or the web side.
"""

from inkflow.settings.options import ENV_PREFIX, ConfigError, Option, opt, options_of
from inkflow.settings.table import (
    OPTIONS,
    OPTIONS_BY_NAME,
    Settings,
    default_static_dir,
    default_upload_dir,
    describe,
    load_settings,
    options_table_markdown,
)
from inkflow.settings.urls import origin_url, redact_url

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "ConfigError",
    "Option",
    "Settings",
    "default_static_dir",
    "default_upload_dir",
    "describe",
    "load_settings",
    "opt",
    "options_of",
    "options_table_markdown",
    "origin_url",
    "redact_url",
]
