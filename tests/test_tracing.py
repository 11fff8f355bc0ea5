"""OpenTelemetry (issue 15): the producer's trace context kept with each job, and each attempt
a span that is its child, across retries, child jobs and every executor. Spans are read back
from the SDK's in-memory exporter; the stored context from the tables themselves."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from typer.testing import CliRunner

from jobq_cli.commands import app
from jobq_core import AsyncJobQueue, JobQueue, NewJob, create_task_runner
from jobq_core.admin import Admin

from . import runner_tasks
from .helpers import backdate


@pytest.fixture(scope="module")
def _exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # set once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    _exporter.clear()
    yield _exporter
    _exporter.clear()


tracer = trace.get_tracer("tests")


def traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def attempts_of(spans: InMemorySpanExporter, job_type: str) -> list[ReadableSpan]:
    found = [s for s in spans.get_finished_spans() if s.name == f"process {job_type}"]
    return sorted(found, key=lambda s: int(str((s.attributes or {})["jobq.job.attempt"])))


def stored(db: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...]:
    """The trace context on the `enqueued` event and, while the job is live, on the job."""
    row = db.execute(
        "SELECT e.traceparent, e.tracestate, j.traceparent, j.tracestate "
        "FROM svti_jobs_events AS e LEFT JOIN svti_jobs AS j ON j.id = e.job_id "
        "WHERE e.job_id = %s AND e.event = 'enqueued'", (job_id,)).fetchone()
    assert row is not None
    return tuple(row)


def flaky_parent(payload: Any, ctx: Any) -> str:
    """Fails its first attempt; the second enqueues a child job and succeeds."""
    if ctx.attempt == 1:
        raise ValueError("flaky")
    ctx.enqueue("child", {"from": ctx.job.id})
    return "ok"


async def aflaky_parent(payload: Any, ctx: Any) -> str:
    if ctx.attempt == 1:
        raise ValueError("flaky")
    await ctx.aenqueue("child", {"from": ctx.job.id})
    return "ok"


def child(payload: Any, ctx: Any) -> str:
    return "done"


async def achild(payload: Any, ctx: Any) -> str:
    return "done"


def _produce_and_run_sync(dsn: str) -> tuple[Any, int]:
    with JobQueue(dsn) as queue:
        runner = create_task_runner(queue)
        runner.register("parent", flaky_parent, max_attempts=3, backoff=lambda attempt: 0.01)
        runner.register("child", child)
        with tracer.start_as_current_span("request") as producer:
            job_id = queue.enqueue("parent", request_id="req-1")
        runner.serve_forever(until_idle=True)
    return producer, job_id


async def _produce_and_run_async(dsn: str) -> tuple[Any, int]:
    async with AsyncJobQueue(dsn) as queue:
        runner = create_task_runner(queue)
        runner.register("parent", aflaky_parent, max_attempts=3, backoff=lambda attempt: 0.01,
                        executor="async")
        runner.register("child", achild, executor="async")
        with tracer.start_as_current_span("request") as producer:
            job_id = await queue.enqueue("parent", request_id="req-1")
        await runner.serve(until_idle=True)
    return producer, job_id


@pytest.mark.parametrize("twin", ["sync queue, thread handlers", "async queue, async handlers"])
def test_attempts_are_children_of_the_producer_across_a_retry_and_a_child_job(
        twin: str, dsn: str, db: psycopg.Connection[Any], spans: InMemorySpanExporter) -> None:
    producer, job_id = (_produce_and_run_sync(dsn) if twin.startswith("sync")
                        else asyncio.run(_produce_and_run_async(dsn)))
    done = (None, None)  # the job itself has left the queue
    assert stored(db, job_id) == (traceparent(producer.get_span_context()), None, *done)

    first, second = attempts_of(spans, "parent")
    for span in (first, second):  # both children of the producer's span, in its trace
        assert span.kind == SpanKind.CONSUMER
        assert span.parent is not None
        assert span.parent.span_id == producer.get_span_context().span_id
        assert span.context.trace_id == producer.get_span_context().trace_id
        assert span.attributes is not None
        assert {k: span.attributes[k] for k in (
            "messaging.system", "messaging.operation.type", "messaging.destination.name",
            "messaging.message.id", "jobq.job.id", "jobq.job.type", "jobq.request_id")} == {
            "messaging.system": "jobq", "messaging.operation.type": "process",
            "messaging.destination.name": "parent", "messaging.message.id": str(job_id),
            "jobq.job.id": job_id, "jobq.job.type": "parent", "jobq.request_id": "req-1"}
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["jobq.job.attempt"], second.attributes["jobq.job.attempt"]) == (1, 2)
    assert first.attributes["jobq.outcome"] == "retried"
    assert first.status.status_code == StatusCode.ERROR
    assert first.status.description == "ValueError: flaky"
    assert [(e.name, e.attributes and e.attributes["exception.type"]) for e in first.events] == [
        ("exception", "ValueError")]
    assert second.attributes["jobq.outcome"] == "completed"
    assert second.status.status_code == StatusCode.OK

    # The child job was enqueued inside the second attempt: its attempt is that span's child,
    # in the same trace, and it inherited the request id.
    (child_span,) = attempts_of(spans, "child")
    assert child_span.parent is not None
    assert child_span.parent.span_id == second.context.span_id
    assert child_span.context.trace_id == producer.get_span_context().trace_id
    assert child_span.attributes is not None
    assert child_span.attributes["jobq.request_id"] == "req-1"
    child_id = child_span.attributes["jobq.job.id"]
    assert isinstance(child_id, int)
    assert second.context is not None
    assert stored(db, child_id) == (traceparent(second.context), None, *done)


def test_a_job_enqueued_outside_any_span_stores_null_and_starts_a_trace_of_its_own(
        dsn: str, db: psycopg.Connection[Any], spans: InMemorySpanExporter) -> None:
    queue = JobQueue(dsn)
    job_id = queue.enqueue("noop", {"n": 1})
    assert stored(db, job_id) == (None,) * 4
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE id = %s", (job_id,)).fetchone() == (1,)
    runner = create_task_runner(queue)
    runner.register("noop", runner_tasks.noop)
    with tracer.start_as_current_span("unrelated"):  # the runner's caller's span is not it
        runner.serve_forever(until_idle=True)
    assert queue.wait(job_id, timeout=5) == {"n": 1}
    (span,) = attempts_of(spans, "noop")
    assert span.parent is None
    assert span.attributes is not None and span.attributes["jobq.outcome"] == "completed"
    assert "jobq.request_id" not in span.attributes


@pytest.mark.parametrize("twin", [JobQueue, AsyncJobQueue])
def test_every_way_to_enqueue_stores_the_context_and_its_tracestate(
        twin: type[JobQueue | AsyncJobQueue], dsn: str, db: psycopg.Connection[Any]) -> None:
    """Plain, keyed, a keyed batch and a batch by COPY, on both twins."""
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "v1")]))
    expected = ("00-00000000000000000000000000001234-0000000000005678-01", "vendor=v1")

    async def call(result: Any) -> Any:
        return await result if inspect.isawaitable(result) else result

    async def scenario() -> tuple[list[int], Any]:
        queue = twin(dsn)
        with trace.use_span(NonRecordingSpan(remote)):
            ids = [await call(queue.enqueue("t")),
                   await call(queue.enqueue("t", idempotency_key="k1")),
                   *await call(queue.enqueue_many([NewJob("t", idempotency_key="k2"),
                                                   NewJob("t")])),
                   *await call(queue.enqueue_many([NewJob("t"), NewJob("t")]))]
            # a held key stores nothing
            assert await call(queue.enqueue("t", idempotency_key="k1")) == ids[1]
        job = await call(queue.claim())
        await call(queue.close())
        return ids, job

    ids, job = asyncio.run(scenario())
    assert len(set(ids)) == 6
    for job_id in ids:
        assert stored(db, job_id) == expected * 2
    assert db.execute("SELECT count(*) FROM svti_jobs_events WHERE event = 'enqueued'"
                      ).fetchone() == (6,)
    assert (job.traceparent, job.tracestate) == expected


def test_the_attempt_keeps_the_producers_tracestate(
        dsn: str, spans: InMemorySpanExporter) -> None:
    queue = JobQueue(dsn)
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "v1")]))
    with trace.use_span(NonRecordingSpan(remote)):
        queue.enqueue("noop")
    runner = create_task_runner(queue)
    runner.register("noop", runner_tasks.noop)
    runner.serve_forever(until_idle=True)
    (span,) = attempts_of(spans, "noop")
    assert span.parent is not None and span.parent.span_id == 0xDEF and span.parent.is_remote
    assert span.context.trace_id == 0xABC
    assert span.context.trace_state == TraceState([("vendor", "v1")])


def test_a_process_handlers_child_job_is_a_child_of_its_attempt(
        dsn: str, spans: InMemorySpanExporter) -> None:
    """The span lives in the runner; its context goes to the worker process with the job, so
    ctx.enqueue there ties the child job to it."""
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    runner.register("report", runner_tasks.report, executor="process")
    runner.register("noop", runner_tasks.noop)
    with tracer.start_as_current_span("request") as producer:
        queue.enqueue("report", {"spawn": True})
    runner.serve_forever(until_idle=True)
    (attempt,) = attempts_of(spans, "report")
    (child_span,) = attempts_of(spans, "noop")
    assert attempt.parent is not None
    assert attempt.parent.span_id == producer.get_span_context().span_id
    assert child_span.parent is not None and child_span.parent.span_id == attempt.context.span_id


def test_outcomes_failed_snoozed_and_cancelled(
        dsn: str, spans: InMemorySpanExporter) -> None:
    queue = JobQueue(dsn)
    started = threading.Event()

    snoozes: list[int] = []

    def snoozy(payload: Any, ctx: Any) -> str:
        if not snoozes:
            snoozes.append(ctx.job.id)
            ctx.snooze(0.01, "later")
        return "ok"

    def stuck(payload: Any, ctx: Any) -> None:
        started.set()
        ctx.cancelled.wait(30)

    runner = create_task_runner(queue, heartbeat_interval=0.1)
    runner.register("poison", runner_tasks.boom, max_attempts=1)
    runner.register("snoozy", snoozy)
    runner.register("stuck", stuck)
    queue.enqueue("poison", "x")
    snoozy_id = queue.enqueue("snoozy", {})
    stuck_id = queue.enqueue("stuck")

    def cancel() -> None:
        started.wait(20)
        Admin(queue).cancel([stuck_id], reason="no longer wanted")

    canceller = threading.Thread(target=cancel)
    canceller.start()
    runner.serve_forever(until_idle=True)
    canceller.join()

    (failed,) = attempts_of(spans, "poison")
    assert failed.attributes is not None and failed.attributes["jobq.outcome"] == "failed"
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ValueError: boom x"
    assert [e.name for e in failed.events] == ["exception"]
    snoozed, completed = sorted(attempts_of(spans, "snoozy"), key=lambda s: s.start_time or 0)
    assert snoozed.attributes is not None and completed.attributes is not None
    assert (snoozed.attributes["jobq.outcome"], completed.attributes["jobq.outcome"]) == (
        "snoozed", "completed")
    assert snoozed.status.status_code == StatusCode.UNSET
    assert queue.wait(snoozy_id, timeout=5) == "ok"
    (cancelled,) = attempts_of(spans, "stuck")
    assert cancelled.attributes is not None
    assert cancelled.attributes["jobq.outcome"] == "cancelled"
    assert cancelled.status.status_code == StatusCode.UNSET


def test_a_handler_sees_its_attempt_span_as_current(
        dsn: str, spans: InMemorySpanExporter) -> None:
    queue = JobQueue(dsn)
    seen: list[int] = []

    def look(payload: Any, ctx: Any) -> None:
        with tracer.start_as_current_span("inside"):
            seen.append(trace.get_current_span().get_span_context().span_id)

    runner = create_task_runner(queue)
    runner.register("look", look)
    queue.enqueue("look")
    started = time.monotonic()
    runner.serve_forever(until_idle=True)
    assert time.monotonic() - started < 30
    (attempt,) = attempts_of(spans, "look")
    (inside,) = [s for s in spans.get_finished_spans() if s.name == "inside"]
    assert inside.parent is not None and inside.parent.span_id == attempt.context.span_id
    assert seen == [inside.context.span_id]


def test_jobq_show_prints_the_stored_context_when_there_is_one(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    queue = JobQueue(dsn)
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "v1")]))
    with trace.use_span(NonRecordingSpan(remote)):
        traced = queue.enqueue("t")
    untraced = queue.enqueue("t")
    shown = CliRunner().invoke(app, ["show", str(traced)])
    assert shown.exit_code == 0, shown.output
    assert ("     traceparent: 00-00000000000000000000000000001234-0000000000005678-01\n"
            "      tracestate: vendor=v1\n") in shown.stdout
    detail = json.loads(CliRunner().invoke(app, ["show", str(traced), "--json"]).stdout)
    assert detail["job"]["traceparent"].endswith("-0000000000005678-01")
    assert "traceparent" not in CliRunner().invoke(app, ["show", str(untraced)]).stdout


def test_an_attempt_whose_lease_was_taken_ends_lease_lost(
        dsn: str, db: psycopg.Connection[Any], spans: InMemorySpanExporter) -> None:
    queue = JobQueue(dsn)
    # One slot, which the victim holds: the runner cannot take the backdated job back itself
    # (a second attempt, and span) before the thief does.
    runner = create_task_runner(queue, concurrency=1, heartbeat_interval=0.2, lease_ms=60_000)
    started, noticed = threading.Event(), threading.Event()

    def victim(payload: Any, ctx: Any) -> str:
        started.set()
        ctx.cancelled.wait(20)
        noticed.set()
        return "stale result"

    runner.register("victim", victim)
    with tracer.start_as_current_span("request") as producer:
        job_id = queue.enqueue("victim")
    serving = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    serving.start()
    try:
        assert started.wait(10)
        thief = None
        deadline = time.monotonic() + 20
        while thief is None and time.monotonic() < deadline:
            # a heartbeat between the two statements renews the lapsed lease: try again
            backdate(db, job_id, lease_until="1 second")
            thief = queue.claim(types=["victim"])
        assert thief is not None and thief.id == job_id
        assert thief.traceparent == traceparent(producer.get_span_context())
        assert noticed.wait(10)
        while not attempts_of(spans, "victim") and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.request_stop()
        serving.join(30)
    (lost,) = attempts_of(spans, "victim")
    assert lost.attributes is not None and lost.attributes["jobq.outcome"] == "lease_lost"
    assert lost.status.status_code == StatusCode.ERROR
    assert lost.parent is not None
    assert lost.parent.span_id == producer.get_span_context().span_id


def test_attempts_get_spans_only_once_the_application_sets_a_tracer_provider() -> None:
    """opentelemetry-api may come with another library: until a provider is set, its spans
    record nothing, and the runner starts none (they would cost about 7 us each)."""
    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from jobq_core import tracing\n"
        "before = tracing.active()\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "print(before, tracing.active())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "True"]
