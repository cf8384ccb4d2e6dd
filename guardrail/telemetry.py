"""OpenTelemetry, in one place: a span per guarded call, per compensation, per decision.

Names and attributes follow the GenAI semantic conventions (``execute_tool {tool}``,
``gen_ai.operation.name``, ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``error.type``); ours
live under ``guardrail.*``. Arguments and results never go into spans.
With no tracer provider configured, OpenTelemetry's no-op spans cost about a microsecond.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from guardrail.redact import redact_text

__all__ = ["Span", "current", "decision", "end", "event", "start_compensation", "start_tool"]

_tracer = trace.get_tracer("guardrail")
_NULL: AbstractContextManager[Any] = nullcontext()


def start_tool(tool: str, call_id: str | None, run_id: str, effect: str) -> Span:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "guardrail.run.id": run_id,
        "guardrail.effect": effect,
    }
    if call_id is not None:
        attributes["gen_ai.tool.call.id"] = call_id
    return _tracer.start_span(f"execute_tool {tool}", kind=SpanKind.INTERNAL, attributes=attributes)


def start_compensation(tool: str, run_id: str, seq: int) -> Span:
    return _tracer.start_span(
        f"compensate {tool}",
        attributes={
            "gen_ai.tool.name": tool,
            "guardrail.run.id": run_id,
            "guardrail.action.seq": seq,
        },
    )


def current(span: Span | None) -> AbstractContextManager[Any]:
    """Make ``span`` the current span while user code runs (so its own spans nest under it)."""
    if span is None or not span.is_recording():
        return _NULL
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


def ids(span: Span) -> tuple[str | None, str | None]:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def end(
    span: Span, *, error: BaseException | None = None, attributes: dict[str, Any] | None = None
) -> None:
    if span.is_recording():
        for key, value in (attributes or {}).items():
            if value is not None:
                span.set_attribute(f"guardrail.{key}", value)
        if error is not None:
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, redact_text(str(error))[:200]))
    span.end()


def event(name: str, **attributes: Any) -> None:
    """A span for a run-level event (halt, pending review, a reviewer's decision)."""
    span = _tracer.start_span(name, attributes={f"guardrail.{k}": v for k, v in attributes.items()})
    span.end()


def decision(action: str, run_id: str, by: str, outcome: str) -> None:
    event(f"guardrail {action}", **{"run.id": run_id, "by": by, "outcome": outcome})
