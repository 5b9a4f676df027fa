"""
Names more than one module must agree on: the URL paths InkFlow answers, and
the names of its upload temp files.  Constants only; imports nothing.
"""

from __future__ import annotations

__all__ = [
    "API_PREFIX",
    "CHAT",
    "HEALTH",
    "METRICS",
    "READY",
    "ROOT",
    "ROUTES",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "WEBSOCKET",
]

# --- URL paths (str, as Klein routes take them; .encode() for twisted.web's bytes)

ROOT = "/"
CHAT = "/api/chat"
HEALTH = "/api/health"
READY = "/api/ready"
METRICS = "/metrics"

#: The @n8n/chat widget's WebSocket (an upgrade, not a Klein route: not in ROUTES,
#: so metrics count it with the page, as before).
WEBSOCKET = "/chat"

#: Every path InkFlow routes by name (the page's files are served below ROOT).
ROUTES = (ROOT, CHAT, HEALTH, READY, METRICS)

#: The API's paths start with this.
API_PREFIX = "/api/"

# --- upload temp files: TEMP_PREFIX + <random> + TEMP_SUFFIX in the upload folder,
# --- written by inkflow.web.uploads and swept by inkflow.server.cleanup

TEMP_PREFIX = "inkflow-"
TEMP_SUFFIX = ".part"
