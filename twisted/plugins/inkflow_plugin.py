"""
twistd plugin: C{twistd [-n] inkflow [options]}.  See L{inkflow.server.tap}.
"""

from twisted.application.service import ServiceMaker

inkflow = ServiceMaker("InkFlow", "inkflow.server.tap", "Hebrew landing page with a chat forwarded to n8n", "inkflow")
