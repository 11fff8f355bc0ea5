"""OpenTelemetry traces, when `opentelemetry-api` is installed (the `jobq[otel]` extra).

An enqueue stores the W3C trace context of the span current at that moment (`capture`) on the
job and its `enqueued` event. Each attempt runs as a span of kind CONSUMER whose parent is that
stored context (`AttemptSpan`): one job is received and processed at a time, the case in which
the messaging semantic conventions let the process span be the producer's child, so a request,
its jobs, their retries and their child jobs read as one tree. The span is current while the
handler runs, so whatever it enqueues or calls is its child in turn.

OpenTelemetry is imported once, here, guarded: without it `capture` returns Nones, `ENABLED`
is false and an attempt's span None, so a job costs the runner a check of that flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .models import Job

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - run by tests/test_lean_install.py, in a clean venv
    _PROPAGATOR: TraceContextTextMapPropagator | None = None
else:
    _PROPAGATOR = TraceContextTextMapPropagator()
    # A proxy until the application sets its tracer provider, then that provider's tracer.
    _TRACER = trace.get_tracer("jobq")
    #: What get_tracer_provider() returns while no provider is set.
    _UNSET = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

#: Whether OpenTelemetry is installed.
ENABLED = _PROPAGATOR is not None


def active() -> bool:
    """Whether attempts get spans: OpenTelemetry is installed and the application has set a
    tracer provider. Until it does, the API hands out spans that record nothing, which still
    cost an attempt about 7 us: a library that pulls opentelemetry-api in should not slow
    a runner that traces nothing. Read per attempt, so a provider set later counts."""
    return ENABLED and not isinstance(trace.get_tracer_provider(), _UNSET)

_NO_CONTEXT: tuple[str | None, str | None] = (None, None)

#: How an attempt ended, as the `jobq.outcome` attribute says it; the first is the only
#: success, the next three errors, the rest neither (the job goes on, or was stopped).
COMPLETED, FAILED, RETRIED, LEASE_LOST, SNOOZED, CANCELLED, SHUTDOWN = (
    "completed", "failed", "retried", "lease_lost", "snoozed", "cancelled", "shutdown")
_ERRORS = frozenset({FAILED, RETRIED, LEASE_LOST})


def capture() -> tuple[str | None, str | None]:
    """The current span's traceparent and tracestate, or Nones outside a span (and without
    OpenTelemetry)."""
    if _PROPAGATOR is None:
        return _NO_CONTEXT
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def _carrier(traceparent: str, tracestate: str | None) -> dict[str, str]:
    return ({"traceparent": traceparent, "tracestate": tracestate} if tracestate
            else {"traceparent": traceparent})


class AttemptSpan:
    """One attempt's span, started as the child of the job's stored trace context (a root
    when the job has none) and current in the attempt's context until `detach`. `end`
    records the outcome; only the first call counts, so a fallback may follow the real one."""

    __slots__ = ("_ended", "_span", "_token")

    def __init__(self, job: Job, queue: str) -> None:
        assert _PROPAGATOR is not None
        # Not the runner's own current context: a job enqueued outside any span starts a
        # trace of its own, whatever the code that claimed it was doing.
        parent = (_PROPAGATOR.extract(_carrier(job.traceparent, job.tracestate))
                  if job.traceparent else otel_context.Context())
        self._span = _TRACER.start_span(
            f"process {job.type}", context=parent, kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "jobq",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": job.type,
                "messaging.message.id": str(job.id),
                "jobq.queue": queue,
                "jobq.job.id": job.id,
                "jobq.job.type": job.type,
                "jobq.job.attempt": job.attempts,
                **({"jobq.request_id": job.request_id} if job.request_id else {}),
            })
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._ended = False

    def detach(self) -> None:
        """No longer current (in the context it was attached in)."""
        otel_context.detach(self._token)

    def carrier(self) -> dict[str, str]:
        """This span's W3C trace context, for a handler in another process."""
        assert _PROPAGATOR is not None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(self._span))
        return carrier

    def end(self, outcome: str, why: str | None = None,
            exc: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        span = self._span
        span.set_attribute("jobq.outcome", outcome)
        if exc is not None:
            span.record_exception(exc)
        if outcome == COMPLETED:
            span.set_status(trace.StatusCode.OK)
        elif outcome in _ERRORS:
            span.set_status(trace.StatusCode.ERROR, (why or outcome).split("\n", 1)[0])
        span.end()


@contextlib.contextmanager
def attached(carrier: dict[str, str] | None) -> Iterator[None]:
    """Make a trace context received from another process (`AttemptSpan.carrier`) current
    inside, so that a process handler's ctx.enqueue and its own spans are the attempt's."""
    if not carrier or _PROPAGATOR is None:
        yield
        return
    token = otel_context.attach(_PROPAGATOR.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)
