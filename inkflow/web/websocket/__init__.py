"""
The C{GET /chat} WebSocket relay, for the Chat Trigger's "Using Response
Nodes" mode: the @n8n/chat widget opens C{<origin of webhookUrl>/chat?...}
(InkFlow's origin) and InkFlow relays it to C{/chat} on the origin of the
webhook URL of the n8n instance that started the execution.

 - L{resource <inkflow.web.websocket.resource>}: the upgrade and its
   refusals (JSON errors, a strict handshake, the Origin rule, the rate
   limit), then the upstream connected before the browser is accepted;
 - L{relay <inkflow.web.websocket.relay>}: the two sides, fragments relayed
   as they arrive, backpressure, the message cap by counting, idleness,
   close codes, the log lines; the registry of open relays;
 - L{wire <inkflow.web.websocket.wire>}: one WebSocket connection at the
   frame level over wsproto, and the pure helpers.

A WebSocket keeps its HTTP connection, so it counts against
C{--max-connections}.  The one private Twisted part it needs (taking the
channel's connection over) is in L{inkflow.web.twisted_hooks}.
"""

from inkflow.web.websocket.relay import ChatSockets, Relay
from inkflow.web.websocket.resource import ChatSocketResource, connect_upstream
from inkflow.web.websocket.wire import Wire, is_websocket_upgrade, upstream_socket_url

__all__ = [
    "ChatSocketResource",
    "ChatSockets",
    "Relay",
    "Wire",
    "connect_upstream",
    "is_websocket_upgrade",
    "upstream_socket_url",
]
