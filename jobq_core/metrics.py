"""Prometheus metrics of a task runner, and of the queue, with the `jobq[metrics]` extra.

A runner given `metrics_port` (`jobq worker --metrics-port`) serves `/metrics` over HTTP while
it serves jobs. Everything is recorded in the runner's own process, where it emits its events
(`RunnerState.emit`, at each transition): a process-executor child only runs the handler and
reports back, so it records nothing. So one worker process is one scrape target, and several
on one host each take a port of their own; nothing is shared between processes.

- `jobq_jobs_<kind>_total{type}`, one counter per event kind: claimed, completed, retried,
  failed, cancelled (by an operator, while running here), lease_lost, snoozed, released
  (handed back at shutdown) and timed_out (also counted as retried or failed).
- `jobq_job_wait_seconds{type}`: from the job's `run_at` (when it became due: its enqueue,
  its schedule or its retry's backoff) to its claim, by the worker's clock.
- `jobq_job_run_seconds{type}`: from the handler's start to a completed, retried or failed
  outcome being recorded.
- `jobq_runner_in_flight`, `jobq_runner_free_slots`: read at each scrape.
- `jobq_queue_jobs{type,state}` and `jobq_queue_oldest_ready_age_seconds{type}`: the queue's
  depth, from `Admin.stats` (cheap by design: its cost grows with the number of types, and
  counts past a cap are estimates), read by the runner every `DEPTH_EVERY` seconds whether or
  not anyone scrapes, never per scrape. Every worker exports the same depth: aggregate it with
  max, not sum. `jobq metrics` prints these gauges once, for a pushgateway.

This module imports prometheus_client at once: the rest of jobq_core imports it only when
metrics are asked for, so the core install runs without it.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .admin import Admin, AsyncAdmin, TypeStats
from .errors import InvalidInputError, MissingExtraError
from .models import Job
from .queue import AsyncJobQueue

try:
    from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ModuleNotFoundError as exc:  # the lean install: name the extra
    raise MissingExtraError(
        "metrics need the [metrics] extra: pip install 'jobq[metrics]'") from exc

if TYPE_CHECKING:
    from .runner import TaskRunner
    from .runner_state import RunnerState

log = logging.getLogger("jobq.runner")

#: Seconds between a runner's reads of the queue's depth, and the longest one may take.
DEPTH_EVERY, DEPTH_TIMEOUT = 15.0, 10.0
#: The event kinds counted, each as `jobq_jobs_<kind>_total`.
COUNTED = ("claimed", "completed", "retried", "failed", "cancelled", "lease_lost", "snoozed",
           "released", "timed_out")
#: Outcomes whose duration is a run time (the handler ran and its outcome was recorded).
RUN_OUTCOMES = frozenset({"completed", "retried", "failed"})
#: From milliseconds (a busy runner's claims) to an hour (a backlog, a long report).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
           900.0, 3600.0)
#: The buckets' `le` labels, as Prometheus writes them.
BOUNDS = [*(str(b) for b in BUCKETS), "+Inf"]


def queue_families(stats: Iterable[TypeStats]) -> list[Metric]:
    """The queue-level gauges of `Admin.stats`: jobs by type and state (ready, scheduled,
    claimed, failed, cancelled: a partition of the queue's rows, so they sum; completed jobs
    leave the queue) and each type's oldest ready job's age."""
    jobs = GaugeMetricFamily("jobq_queue_jobs", "Jobs in the queue by type and state "
                             "(estimates past the stats' caps)", labels=["type", "state"])
    oldest = GaugeMetricFamily("jobq_queue_oldest_ready_age_seconds",
                               "Age of the oldest due job of the type", labels=["type"])
    for s in stats:
        for state, count in (("ready", s.ready), ("scheduled", s.scheduled),
                             ("claimed", s.claimed), ("failed", s.failed),
                             ("cancelled", s.cancelled)):
            jobs.add_metric([s.type, state], count.value)
        if s.oldest_ready_age is not None:
            oldest.add_metric([s.type], s.oldest_ready_age.total_seconds())
    return [jobs, oldest]


def queue_exposition(stats: Iterable[TypeStats]) -> bytes:
    """`queue_families` in Prometheus' text exposition format."""
    registry = CollectorRegistry()
    registry.register(_Fixed(queue_families(stats)))
    return generate_latest(registry)


class _Fixed(Collector):
    """Families made beforehand, collected as they are."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _Histogram:
    """One type's observations: a count per bucket (the last is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1  # le: a bound counts its own
        self.total += value

    def family_args(self) -> tuple[list[tuple[str, float]], float]:
        counts, total = list(self.counts), self.total
        return list(zip(BOUNDS, itertools.accumulate(counts), strict=True)), total


class RunnerMetrics(Collector):
    """One runner's metrics, in a registry of its own (runners in one process do not mix),
    kept across its serves like its `counters`.

    Recording is plain counting on the event loop, turned into metric families at each
    scrape: prometheus_client's own Counter and Histogram took about 10 us an event (label
    lookups and locks), half a job's worth of a busy runner's CPU for the two events of a
    job. The scrape's thread reads copies (each one C-level copy, atomic under the GIL), so
    a scrape during an observation may see it in a histogram's buckets and not yet in its
    sum, or the reverse, until the next scrape."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.registry = CollectorRegistry()
        #: Events by (kind, type).
        self._counts: dict[tuple[str, str], int] = {}
        self._wait: dict[str, _Histogram] = {}
        self._run: dict[str, _Histogram] = {}
        self._depth: list[TypeStats] = []
        self.registry.register(self)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        #: Written to stop the server's thread at once.
        self._waker: socket.socket | None = None

    @property
    def port(self) -> int | None:
        """The port `/metrics` is served on while the runner serves (the one chosen, for 0)."""
        return None if self._server is None else self._server.server_port

    def record(self, kind: str, job: Job, duration: float | None) -> None:
        """One event of the runner (`RunnerEvent`'s kind, job and duration): called on its
        event loop, in its process."""
        key = (kind, job.type)
        self._counts[key] = self._counts.get(key, 0) + 1
        if kind == "claimed":
            histograms, value = self._wait, max(time.time() - job.run_at.timestamp(), 0.0)
        elif kind in RUN_OUTCOMES and duration is not None:
            histograms, value = self._run, duration
        else:
            return
        histogram = histograms.get(job.type)
        if histogram is None:
            histogram = histograms[job.type] = _Histogram()
        histogram.observe(value)

    def collect(self) -> Iterator[Metric]:
        """This scrape's families: the counts and histograms so far, the slots now, the
        depth as last read."""
        counts = self._counts.copy()
        for kind in COUNTED:
            counter = CounterMetricFamily(f"jobq_jobs_{kind}", f"This runner's {kind} events, "
                                          "by job type", labels=["type"])
            for (counted, job_type), n in sorted(counts.items()):
                if counted == kind:
                    counter.add_metric([job_type], n)
            yield counter
        for name, text, histograms in (
                ("jobq_job_wait_seconds", "From a job's run_at to its claim", self._wait),
                ("jobq_job_run_seconds", "From a handler's start to its outcome recorded",
                 self._run)):
            family = HistogramMetricFamily(name, text, labels=["type"])
            for job_type, histogram in sorted(histograms.copy().items()):
                family.add_metric([job_type], *histogram.family_args())
            yield family
        health = self.runner.health()
        yield GaugeMetricFamily("jobq_runner_in_flight", "Jobs this runner holds",
                                value=health["in_flight"])
        yield GaugeMetricFamily("jobq_runner_free_slots", "This runner's concurrency less "
                                "its slots taken", value=health["free_slots"])
        yield from queue_families(self._depth)

    def start_server(self, port: int, addr: str) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidInputError(f"metrics_port must be a port number, got {port!r}")
        server = _ServerV6 if ":" in addr else _Server
        try:
            self._server = make_server(addr, port, make_wsgi_app(self.registry), server,
                                       handler_class=_Quiet)
        except OSError as exc:
            raise InvalidInputError(f"cannot serve metrics on {addr}:{port}: {exc}") from None
        self._waker, woken = socket.socketpair()
        self._thread = threading.Thread(target=_serve_until, args=(self._server, woken),
                                        name="jobq-metrics", daemon=True)
        self._thread.start()
        log.info("serving metrics on http://%s:%d/metrics", addr or "0.0.0.0", self.port)

    def stop_server(self) -> None:
        if self._server is None or self._thread is None or self._waker is None:
            return
        self._waker.send(b"stop")
        self._thread.join(timeout=5.0)
        self._server.server_close()
        self._waker.close()
        self._server = self._thread = self._waker = None

    async def watch_depth(self, state: RunnerState) -> None:
        """Read the queue's depth every `DEPTH_EVERY` seconds until cancelled. A failed read
        keeps the last figures and never stops the runner: metrics are no reason to."""
        while True:
            try:
                self._depth = await asyncio.wait_for(self._read_depth(state), DEPTH_TIMEOUT)
            except Exception as exc:
                log.warning("could not read the queue's depth for the metrics (trying again "
                            "in %.0f s): %s", DEPTH_EVERY, exc)
            await asyncio.sleep(DEPTH_EVERY)

    @staticmethod
    async def _read_depth(state: RunnerState) -> list[TypeStats]:
        queue = state.queue
        if isinstance(queue, AsyncJobQueue):
            return await AsyncAdmin(queue).stats(fold=False)
        # On the loops' threads, like the runner's other background calls.
        return await asyncio.get_running_loop().run_in_executor(
            state.loop_threads, functools.partial(Admin(queue).stats, fold=False))


def _serve_until(server: WSGIServer, woken: socket.socket) -> None:
    """Accept scrapes until `woken` is written to: no polling, so a stop is immediate
    (prometheus_client's server polls every 0.5 s, which every serve() would wait out)."""
    with woken, selectors.DefaultSelector() as selector:
        selector.register(server, selectors.EVENT_READ)
        selector.register(woken, selectors.EVENT_READ)
        while all(key.fileobj is server for key, _ in selector.select()):
            server.handle_request()


class _Server(ThreadingMixIn, WSGIServer):
    """A scrape per thread, so one slow scraper holds up no other; none outlives the process."""

    daemon_threads = True


class _ServerV6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: a scrape every few seconds is no news."""
