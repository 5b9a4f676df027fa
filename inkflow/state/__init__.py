"""
Shared state across processes and instances: see L{inkflow.state.base}.
"""
