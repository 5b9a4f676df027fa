"""
What the page knows before it asks the server: the default limits (the
settings defaults) and the Hebrew text of every error code (L{inkflow.errors}),
as the ES module C{static/assets/messages.js}.

The file is generated, never edited by hand: C{python -m
inkflow.web.page_messages > static/assets/messages.js}.  A unit test checks it
is current, so a new error code or a changed default cannot leave the page
behind.  The page's own texts (no network, a stream cut off...) stay in the
page.  The limits the server actually runs with reach the page from
C{/api/health}; these are what it shows before that answer.
"""

from __future__ import annotations

import json

from inkflow.errors import MESSAGES
from inkflow.settings import Settings

__all__ = ["PAGE_MESSAGES_PATH", "default_limits", "render", "server_messages"]

#: The generated file, relative to the page's folder (C{static/}).
PAGE_MESSAGES_PATH = "assets/messages.js"

#: The settings the page checks a message against before sending it.
LIMIT_FIELDS = ("max_file_size", "max_files", "max_message_chars", "allowed_types")


def default_limits() -> dict[str, object]:
    """
    The page's limits: the settings defaults (what C{/api/health} reports
    when nothing is configured).
    """
    defaults = Settings.defaults()
    return {name: _plain(getattr(defaults, name)) for name in LIMIT_FIELDS}


def server_messages() -> dict[str, str]:
    """
    The Hebrew message of every error code the server answers with.
    """
    return {code: hebrew for code, (_status, hebrew, _english) in MESSAGES.items()}


def render() -> str:
    """
    The text of C{static/assets/messages.js}.
    """
    return (
        "// Generated from inkflow/errors.py and the settings defaults by\n"
        "//   python -m inkflow.web.page_messages > static/assets/messages.js\n"
        "// Do not edit: tests/unit/test_page_messages.py checks it is current.\n"
        "\n"
        "// The limits the page checks before sending, until /api/health reports the server's.\n"
        f"export const DEFAULT_LIMITS = Object.freeze({_js(default_limits())});\n"
        "\n"
        "// The Hebrew message for each error code the server answers with.\n"
        f"export const SERVER_MESSAGES = Object.freeze({_js(server_messages())});\n"
    )


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _js(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


if __name__ == "__main__":  # pragma: no cover - generator
    print(render(), end="")
