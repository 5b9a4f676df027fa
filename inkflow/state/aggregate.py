"""
The whole server's C{/metrics} under C{--workers N}: the parent merges the
workers' own texts (L{Aggregator}).

Why the parent merges rather than prometheus_client's multiprocess mode: that
mode keeps every value in mmap'd files under C{PROMETHEUS_MULTIPROC_DIR} and
only covers the metric classes that write there, while half of InkFlow's
metrics are read from the health snapshot at scrape time by a custom
collector (queue, connections, breakers, streams, cleanup), which the mode
cannot see; it also needs the folder cleaned per run and
C{mark_process_dead} on every worker exit.  The parent already supervises the
workers and holds a connection to each (the state socket), so it asks each
for its text and merges:

 - counters, histograms and summaries (and untyped samples): summed over the
   workers.  A worker that exits (or restarts) has its last counts kept as
   "retired" and added to every later scrape, so a counter never goes
   backwards (a restarted worker counts from 0 on top of them);
 - gauges: one series per worker, labelled C{worker="<slot>"} (a gauge of a
   worker that is gone is gone with it); C{sum without (worker)} gives the
   server's figure;
 - C{*_created} samples are dropped (they would change with every restart)
   and C{info} metrics (C{inkflow_build_info}) are taken once.

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

__all__ = ["WORKER_LABEL", "Aggregator", "merge_health"]

WORKER_LABEL = "worker"

SUMMED = ("counter", "histogram", "summary", "unknown", "untyped", "gaugehistogram")

#: A sample's identity: its name and its labels, sorted.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Family:
    name: str
    documentation: str
    type: str
    #: Summed samples (counters, histograms).
    values: dict[SampleKey, float] = field(default_factory=dict)


def _parse(text: str) -> dict[str, _Family]:
    families: dict[str, _Family] = {}
    for metric in text_string_to_metric_families(text):
        family = families.setdefault(metric.name, _Family(metric.name, metric.documentation, metric.type))
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            family.values[key] = family.values.get(key, 0.0) + sample.value
    return families


class Aggregator:
    """
    The workers' last metrics, and the counts of those gone.
    """

    def __init__(self) -> None:
        self._live: dict[str, dict[str, _Family]] = {}
        self._retired: dict[str, _Family] = {}

    @property
    def workers(self) -> list[str]:
        return sorted(self._live)

    def update(self, worker: str, text: str) -> None:
        """
        C{worker}'s metrics as it last said them (its C{/metrics} text).
        """
        self._live[worker] = _parse(text)

    def retire(self, worker: str) -> None:
        """
        C{worker} exited: its counts stay in the sums, its gauges go.
        """
        families = self._live.pop(worker, None)
        if families is None:
            return
        for name, family in families.items():
            if family.type not in SUMMED:
                continue
            kept = self._retired.setdefault(name, _Family(name, family.documentation, family.type))
            for key, value in family.values.items():
                kept.values[key] = kept.values.get(key, 0.0) + value

    def families(self) -> list[Metric]:
        """
        The merged metric families.
        """
        merged: dict[str, _Family] = {}
        gauges: dict[str, Metric] = {}
        infos: dict[str, Metric] = {}
        for source in [self._retired, *(self._live[w] for w in sorted(self._live))]:
            for name, family in source.items():
                if family.type not in SUMMED:
                    continue
                into = merged.setdefault(name, _Family(name, family.documentation, family.type))
                for key, value in family.values.items():
                    into.values[key] = into.values.get(key, 0.0) + value
        for worker in sorted(self._live):
            for name, family in self._live[worker].items():
                if family.type == "info":
                    if name not in infos:
                        info = Metric(name, family.documentation, "info")
                        for (sample, labels), value in family.values.items():
                            info.add_sample(sample, dict(labels), value)
                        infos[name] = info
                    continue
                if family.type in SUMMED:
                    continue
                gauge = gauges.setdefault(name, Metric(name, family.documentation, family.type))
                for (sample, labels), value in family.values.items():
                    gauge.add_sample(sample, {**dict(labels), WORKER_LABEL: worker}, value)
        result: list[Metric] = []
        for name in sorted(merged):
            family = merged[name]
            metric = Metric(name, family.documentation, family.type)
            for (sample, labels), value in family.values.items():
                metric.add_sample(sample, dict(labels), value)
            result.append(metric)
        result.extend(gauges[name] for name in sorted(gauges))
        result.extend(infos[name] for name in sorted(infos))
        return result

    def render(self) -> bytes:
        """
        The merged text, in the Prometheus text format.
        """
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.families()))
        return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def merge_health(workers: dict[str, dict[str, object]]) -> dict[str, object]:
    """
    The server's totals from the workers' health snapshots: every number
    whose key ends in C{_total} (at any depth) summed, and the per-worker
    snapshots under C{"workers"}.
    """
    totals: dict[str, object] = {}

    def add(into: dict[str, object], value: dict[str, object]) -> None:
        for key, item in value.items():
            if isinstance(item, dict):
                sub = into.setdefault(key, {})
                if isinstance(sub, dict):
                    add(sub, item)
            elif key.endswith("_total") and isinstance(item, int | float) and not isinstance(item, bool):
                previous = into.get(key, 0)
                into[key] = (previous if isinstance(previous, int | float) else 0) + item

    for snapshot in workers.values():
        add(totals, snapshot)
    return {"totals": _prune(totals), "workers": workers}


def _prune(value: dict[str, object]) -> dict[str, object]:
    pruned: dict[str, object] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            inner = _prune(item)
            if inner:
                pruned[key] = inner
        else:
            pruned[key] = item
    return pruned
