"""/metrics of a multi-worker server: every answer is the sum of all workers, dead ones included.

Why: with ``serve --workers N`` the kernel hands each connection, a Prometheus scrape included,
to one worker (SO_REUSEPORT). If that worker answered with its own counters, successive scrapes
would jump between workers' values, ``rate()`` would see resets, and a guardrail would compare
one worker's errors with another's decisions. So each answer must be the aggregate.

Why snapshots merged at scrape time, not prometheus_client's multiprocess mode: that mode only
aggregates the library's own Counter/Gauge/Histogram/Summary values kept in mmap files; our
custom collectors (:class:`metrics.BatchHistogram`, :class:`metrics.LogHealthCollector`) would
vanish from the output, Summaries lose nothing but Gauges need a mode each, and every metric
update becomes a file write. Here each worker renders its registry as usual and writes the text
to ``<dir>/live-<pid>.prom`` (atomically: temp file + rename) every ``interval_s`` and at
shutdown; the worker that answers a scrape first writes its own fresh snapshot, then parses
every snapshot (``prometheus_client.parser``) and merges them:

* counters, histograms, summaries: summed sample by sample (``_created``: the earliest);
* gauges: from live workers only; summed for the ones that count things (:data:`SUMMED_GAUGES`:
  rows behind, observations in the drift windows), the largest for the rest (``policy_info``,
  drift PSI per feature, age of the oldest unwritten row: the worst worker is what an alert
  is about).

Counters never go backwards across scrapes: the supervisor renames a dead worker's file to
``dead-<pid>.prom`` (:func:`mark_dead`), whose counters stay in the sum until the whole server
stops; its restarted successor (a new pid) starts a file of its own from zero. A SIGKILLed
worker's last ``interval_s`` of counts never reached its file and is missing, but nothing
already served goes down: every value a scrape returned was written to its worker's file first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

__all__ = ["SUMMED_GAUGES", "SharedMetrics", "mark_dead", "merge", "read_snapshots"]

log = logging.getLogger("policy_server")

SUMMED_GAUGES = frozenset({"policy_decision_log_backlog_rows", "policy_observation_drift_window_size"})
LIVE, DEAD, SUFFIX = "live-", "dead-", ".prom"
_CUMULATIVE = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class SharedMetrics:
    """One worker's side: its snapshot file, written periodically and on every scrape it answers."""

    def __init__(self, directory: str | os.PathLike[str], *, interval_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.interval_s = interval_s
        self.path = self.directory / f"{LIVE}{os.getpid()}{SUFFIX}"
        self._render: Callable[[], bytes | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop, render: Callable[[], bytes | None]) -> None:
        """Write ``render()`` (None: nothing to write yet) every ``interval_s`` from the loop."""
        self._loop, self._render = loop, render
        self._timer = loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        assert self._render is not None and self._loop is not None
        self._write_rendered()
        self._timer = self._loop.call_later(self.interval_s, self._tick)

    def _write_rendered(self) -> None:
        if self._render is None:
            return
        text = self._render()
        if text is not None:
            self.write(text)

    def write(self, text: bytes) -> None:
        """Replace this worker's snapshot; a failure is logged, the next write tries again."""
        tmp = self.path.with_name(f".tmp-{os.getpid()}")
        try:
            tmp.write_bytes(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the metrics snapshot %s: %s", self.path, exc)

    def scrape(self, own: bytes) -> bytes:
        """The answer to GET /metrics: this worker's fresh ``own`` text merged with every snapshot."""
        self.write(own)
        return merge(read_snapshots(self.directory))

    def close(self) -> None:
        """Stop the timer and write the final counts (after the decision log closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write_rendered()


def read_snapshots(directory: Path) -> list[tuple[str, bool]]:
    """(text, live) of every worker's snapshot; a file renamed meanwhile is read under its new name."""
    out = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        live = path.name.startswith(LIVE)
        candidates = [path, path.with_name(DEAD + path.name[len(LIVE) :])] if live else [path]
        for i, candidate in enumerate(candidates):
            try:
                out.append((candidate.read_text(), live and i == 0))
                break
            except FileNotFoundError:
                continue
    return out


def mark_dead(directory: str | os.PathLike[str], pid: int) -> None:
    """Supervisor: worker ``pid`` is gone; keep its counters, drop its gauges."""
    path = Path(directory) / f"{LIVE}{pid}{SUFFIX}"
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(f"{DEAD}{pid}{SUFFIX}"))


def merge(snapshots: Iterable[tuple[str, bool]]) -> bytes:
    """Sum the snapshots as the module docstring says; Prometheus text format 0.0.4."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text, live in snapshots:
        for fam in text_string_to_metric_families(text):
            if fam.type not in _CUMULATIVE and not live:
                continue
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            acc = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(s.labels.items()))
                prev = acc.get(key)
                acc[key] = s.value if prev is None else _combine(fam, s.name, prev, s.value)
    for name, fam in families.items():
        fam.samples = [Sample(sname, dict(labels), value) for (sname, labels), value in values[name].items()]
    return generate_latest(_Fixed(list(families.values())))


def _combine(fam: Metric, sample: str, a: float, b: float) -> float:
    if sample.endswith("_created"):
        return min(a, b)
    if fam.type in _CUMULATIVE or fam.name in SUMMED_GAUGES:
        return a + b
    return max(a, b)


class _Fixed(CollectorRegistry):
    """A registry that yields the given families (generate_latest's input)."""

    def __init__(self, families: list[Metric]) -> None:
        super().__init__(auto_describe=False)
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)
