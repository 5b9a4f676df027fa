"""
Run every benchmark and write the results table into C{docs/benchmarks.md}
(between the results markers; the rest of that file is kept as written).

    python -m bench [--rounds 2] [--only uploads,static] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable

from bench import overload, proxy, shared_state, soak, startup, static, stream, uploads, workers
from bench._common import REPO, Row, print_rows, say, table

START = "<!-- bench:results:start (written by `python -m bench`; edit outside these markers) -->"
END = "<!-- bench:results:end -->"

HEADER = """# Benchmarks

How InkFlow compares with simple references measured in the same run (machines are noisy: compare the
ratios, not the absolute figures).  Run `python -m bench` from the repository root (about 5 minutes; it
needs `wrk`); each benchmark also runs alone: `python -m bench.uploads`, `bench.overload`, `bench.static`,
`bench.proxy`, `bench.startup`, `bench.workers`, `bench.soak`, `bench.shared_state`.  Everything listens on 127.0.0.1 only.

"""


def _machine(load_before: tuple[float, float, float]) -> str:
    import twisted

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load_after = os.getloadavg()
    return (
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.node() or 'a host'}: "
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"Twisted {twisted.__version__}. Load average before / after: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} (other work was running on the machine)."
    )


def _doc(rows: list[Row], machine: str, failures: list[str], seconds: float) -> str:
    lines = [START, "", machine, "", table(rows), ""]
    notes = [r for r in rows if r.note]
    if notes:
        lines += ["Notes from the run:", ""] + [f"- {r.bench}, {r.what}: {r.note}" for r in notes] + [""]
    for failure in failures:
        lines += [f"- **Benchmark failed to run:** {failure}", ""]
    lines += [f"Whole run: {seconds:.0f} s.", "", END]
    return "\n".join(lines)


def write_doc(path: str, block: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = HEADER + START + "\n" + END + "\n"
    if START in current and END in current:
        before = current.split(START, 1)[0]
        after = current.split(END, 1)[1]
        text = before + block + after
    else:
        text = current.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per measurement (at least 2)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset: uploads,overload,static,proxy,startup,workers,soak,stream,shared_state",
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rounds = max(2, args.rounds)
    benches: dict[str, Callable[[], list[Row]]] = {
        "uploads": lambda: uploads.run(rounds, naive_clients=1),
        "overload": lambda: overload.run(rounds),
        "static": lambda: static.run(rounds),
        "proxy": lambda: proxy.run(rounds),
        "startup": lambda: startup.run(),
        "workers": lambda: workers.run(rounds),
        "soak": lambda: soak.run(),
        "stream": lambda: stream.run(rounds, count=500),
        "shared_state": lambda: shared_state.run(rounds),
    }
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(benches)
    unknown = set(chosen) - set(benches)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    load_before = os.getloadavg()
    began = time.monotonic()
    rows: list[Row] = []
    failures: list[str] = []
    for name in chosen:
        try:
            got = benches[name]()
        except Exception as e:
            traceback.print_exc()
            failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        print_rows(name, got)
        rows += got
    seconds = time.monotonic() - began
    print_rows("all", rows)
    say(f"\nwhole run: {seconds:.0f} s")
    if not args.no_write:
        write_doc(args.out, _doc(rows, _machine(load_before), failures, seconds))
        say(f"wrote {args.out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
