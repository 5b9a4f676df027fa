"""
twistd plugin: C{twistd [-n] inkflow [options]}.  See L{inkflow.tap}.
"""

from twisted.application.service import ServiceMaker

inkflow = ServiceMaker("InkFlow", "inkflow.tap", "Hebrew landing page with a chat forwarded to n8n", "inkflow")
