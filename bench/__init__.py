"""
InkFlow's benchmarks: each measures InkFlow and a reference in the same run
and reports the ratio.  Not part of the test suite.

Run them all (writes C{docs/benchmarks.md})::

    python -m bench

or one at a time::

    python -m bench.uploads
    python -m bench.overload
    python -m bench.static
    python -m bench.proxy
    python -m bench.startup

Everything listens on 127.0.0.1 only.
"""
