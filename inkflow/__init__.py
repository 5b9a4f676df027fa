"""
InkFlow: a small, sturdy Twisted front for an n8n-backed site.

It serves a Hebrew right-to-left landing page with a chat widget and forwards
each chat message (text plus attached files) to an n8n webhook.
"""

__version__ = "0.1.0"
