"""
The house's layout: which sub-package may import which, as one table, read
from the source with C{ast} (nothing is imported).

The rooms are the top-level modules (C{inkflow}: errors, chat, paths,
snapshot, supervisor), C{settings}, C{server}, C{web}, C{n8n} and C{tools}.
An edge is any import, at module level, inside a function or under
C{TYPE_CHECKING}: a lazy import is still a dependency.  A new edge is a
decision: add it to L{ALLOWED} with its reason, or import something else.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parents[2]

#: The sub-packages, and the module-level rooms of C{inkflow} itself.
ROOMS = ("inkflow", "settings", "server", "web", "n8n", "state", "tools")

#: Who may import whom, beyond itself.  A value is a room (all of it) or one
#: module of it (C{"room:module"}): a narrow edge into a room that is
#: otherwise off limits.
ALLOWED: dict[str, frozenset[str]] = {
    # Shared and pure: errors, chat, paths, snapshot, supervisor import no room; the health
    # reporter (health.py) reads the settings it reports (mode, limits, upstream origins).
    "inkflow": frozenset({"settings"}),
    # The --retry-on vocabulary is the retry policy's (n8n/retry.py imports nothing of InkFlow).
    # The [page] table is parsed by inkflow/page.py (pure, imports nothing of InkFlow).
    "settings": frozenset({"n8n:inkflow.n8n.retry", "inkflow:inkflow.page"}),
    # The one place private Twisted parts are kept is web/twisted_hooks.py (its client section).
    "n8n": frozenset({"inkflow", "settings", "web:inkflow.web.twisted_hooks"}),
    # The edge answers with what n8n says (stream lines, execution ids, the demo).
    "web": frozenset({"inkflow", "settings", "n8n"}),
    # What must agree across processes: idempotency, rate limit, execution map (memory, AMP, Redis).
    # The --redis URL is parsed where the settings check it (settings/urls.py, pure).
    "state": frozenset({"inkflow", "n8n", "web", "settings:inkflow.settings.urls"}),
    # The composition root builds everything.
    "server": frozenset({"inkflow", "settings", "web", "n8n", "state"}),
    # Operator tools speak HTTP to the server: they never import it.
    "tools": frozenset({"inkflow", "settings"}),
}

#: Edges still present that the table does not allow, each with what removes
#: it (none now: a new one is a decision, written here with its way out).
PENDING: dict[tuple[str, str], str] = {}

#: The entry points (the twistd plugin, the .tac) and what they may import.
ENTRY_POINTS = {
    "twisted/plugins/inkflow_plugin.py": frozenset({"server", "settings"}),
    "inkflow.tac": frozenset({"server", "settings"}),
}


#: The only modules that may import the global reactor: the entry points
#: that start a process (the rest is handed a reactor or a clock).
REACTOR_IMPORTERS = frozenset(
    {
        "inkflow.server.service",  # makeService(settings), the reactor defaulted for twistd
        "inkflow.server.tap",  # the plugin's makeService: twistd's entry point (the start-up guard, systemd's clock)
        "inkflow.server.worker",  # a worker process's main
        "inkflow.tools.cli",  # `inkflow monitor` / `inkflow watchdog`
        "inkflow.tools.watchdog",  # the watchdog's main
    }
)


@cache
def modules() -> dict[str, Path]:
    """
    Every InkFlow module by dotted name (the page's data packages aside).
    """
    found: dict[str, Path] = {}
    for path in (ROOT / "inkflow").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if "static" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def room(module: str) -> str:
    """
    The room of a dotted module name: its sub-package, or C{inkflow}.
    """
    parts = module.split(".")
    if len(parts) >= 2 and (ROOT / "inkflow" / parts[1]).is_dir():
        return parts[1]
    return "inkflow"


@cache
def imported(path: Path) -> frozenset[str]:
    """
    The InkFlow modules the file at C{path} imports, anywhere in it.
    """
    known = modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return frozenset(name for name in found if name in known)


@cache
def edges() -> dict[tuple[str, str], frozenset[tuple[str, str]]]:
    """
    Every import across rooms: (from room, to room) -> the (importer,
    imported) module pairs behind it.
    """
    result: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for name, path in modules().items():
        for target in imported(path):
            if room(target) != room(name):
                result.setdefault((room(name), room(target)), set()).add((name, target))
    return {key: frozenset(pairs) for key, pairs in result.items()}


def allowed(source: str, target_module: str) -> bool:
    rules = ALLOWED[source]
    return room(target_module) in rules or f"{room(target_module)}:{target_module}" in rules


def reached(module: str) -> set[str]:
    """
    Every InkFlow module C{module} imports, directly or through others.
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported(modules()[name]))
    return seen - {module}


class LayoutTests(TestCase):
    """
    The import edges between rooms are the table's.
    """

    def test_every_module_is_in_a_room(self) -> None:
        """The table names every room there is, and only those."""
        self.assertEqual({room(name) for name in modules()}, set(ROOMS))
        self.assertEqual(set(ALLOWED), set(ROOMS))

    def test_every_edge_is_allowed_or_pending(self) -> None:
        """No module imports across rooms where the table does not allow it."""
        refused = sorted(
            f"{importer} -> {target}"
            for (source, target_room), pairs in edges().items()
            if (source, target_room) not in PENDING
            for importer, target in pairs
            if not allowed(source, target)
        )
        self.assertEqual(refused, [])

    def test_every_allowed_edge_is_used(self) -> None:
        """The table holds no edge nobody takes (a stale allowance is a door left open)."""
        used = {
            (source, rule)
            for (source, _), pairs in edges().items()
            for _, t in pairs
            for rule in (room(t), f"{room(t)}:{t}")
        }
        unused = sorted(
            f"{source} -> {rule}" for source, rules in ALLOWED.items() for rule in rules if (source, rule) not in used
        )
        self.assertEqual(unused, [])

    def test_only_the_entry_points_import_the_global_reactor(self) -> None:
        """Library code is handed its reactor or clock; only REACTOR_IMPORTERS import the global one."""
        importers = set()
        for name, path in modules().items():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
                    if any(alias.name == "reactor" for alias in node.names):
                        importers.add(name)
                elif isinstance(node, ast.Import) and any(a.name == "twisted.internet.reactor" for a in node.names):
                    importers.add(name)
        self.assertLessEqual(importers, REACTOR_IMPORTERS)

    def test_no_import_cycle_between_modules(self) -> None:
        """No module reaches itself through its imports."""
        cycles = sorted(name for name in modules() if name in reached(name))
        self.assertEqual(cycles, [])

    def test_the_entry_points_only_import_the_server_and_settings(self) -> None:
        """The twistd plugin and the .tac stay a few lines: they hand over to the server."""
        for entry, rooms in ENTRY_POINTS.items():
            self.assertLessEqual({room(m) for m in imported(ROOT / entry)}, rooms, entry)

    def test_the_supervisor_and_the_tools_never_reach_the_server(self) -> None:
        """inkflow.supervisor and every tool reach neither inkflow.server nor inkflow.web, even indirectly."""
        for module in ("inkflow.supervisor", *(m for m in modules() if room(m) == "tools")):
            self.assertEqual({m for m in reached(module) if room(m) in ("server", "web")}, set(), module)

    def test_no_import_cycle_between_the_service_and_the_workers(self) -> None:
        """The service reaches the workers' parent side, never the worker entry point; neither reaches back."""
        self.assertIn("inkflow.server.workers", reached("inkflow.server.service"))
        self.assertNotIn("inkflow.server.worker", reached("inkflow.server.service"))
        self.assertNotIn("inkflow.server.service", reached("inkflow.server.workers"))
        self.assertIn("inkflow.server.service", reached("inkflow.server.worker"))
