"""LangChain's ``create_agent``: :class:`GuardrailMiddleware` guards every tool call of an agent
(imported as ``guardrail.adapters.langchain.GuardrailMiddleware``; see that module for the
tools' own wrapper, ``wrap_tools``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt
from pydantic import BaseModel, ValidationError

from guardrail.errors import GuardrailError, RunHalted, RunStateError
from guardrail.failure import SIBLING_WAIT
from guardrail.guard import Guard
from guardrail.run import Run


class ToolReportedError(Exception):
    """A tool answered with an error ToolMessage instead of raising: guardrail treats it as a
    failure (the agent must not build on it)."""


TURNS_KEPT = 1024  # threads whose latest turn the middleware remembers


class GuardrailMiddleware(AgentMiddleware):
    """Guards every tool call of a ``create_agent`` agent; halts become LangGraph interrupts.

    A thread's turn is a guardrail run: the first turn's run id is the thread id
    (``config["configurable"]["thread_id"]``), a later turn's ``<thread id>~<n>`` (turn ``n``,
    started once the previous turn's run completed), each with ``{"thread_id": ...}`` in its
    metadata. So a conversation keeps calling tools turn after turn, and each turn's calls are
    logged, halted and decided on their own. When a call fails the guard compensates and
    the middleware calls ``interrupt(...)`` with a summary (run id, status, review items): the
    agent pauses on its thread. After a person resumes the run (``guard.resume`` or
    ``guardrail resume RUN``) the caller continues the thread with ``Command(resume=...)``; calls
    already done return their recorded results, nothing runs twice. If the person aborts
    instead, continuing the thread raises :class:`guardrail.RunHalted`.

    Failures are **held** by default (``on_failure="hold"``): a checkpointed thread continues
    after review from where it paused and does not redo the calls before the failure, so they
    must still stand when it does. Nothing is undone until a person aborts the run (then every
    reversible call is undone, newest first). Pass ``on_failure="compensate"`` when the agent is
    restarted from scratch after review instead (then undone calls run again on the replay).

    ``wait_for_decision``: seconds to wait in place for a person's decision before pausing the
    thread (`Guard.wait_decision`): a resume within them lets the step carry on at once, no
    ``Command(resume=...)`` needed; an abort ends it with `RunHalted`.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        agent: str = "agent",
        on_failure: str = "hold",
        wait_for_decision: float | None = None,
    ) -> None:
        super().__init__()
        self.guard = guard
        self.agent = agent
        self.on_failure = on_failure
        self.wait_for_decision = wait_for_decision
        self._runs: dict[str, Run] = {}
        # thread id -> the run id of its latest turn: a cache of recent threads (bounded: a
        # server sees endless threads; a thread it forgot is found again in the store)
        self._turns: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    # the run of a thread

    def _thread(self, config: Any) -> str:
        thread = ((config or {}).get("configurable") or {}).get("thread_id")
        if thread is None:
            raise GuardrailError(
                "GuardrailMiddleware needs a thread: compile the agent with a checkpointer and "
                'invoke it with config={"configurable": {"thread_id": ...}}',
                field="thread_id",
            )
        return str(thread)

    def _turn(self, thread: str) -> str:
        """The run id of the thread's current turn: the first whose run has not completed."""
        with self._lock:
            known = self._turns.get(thread)
        run_id, n = known or thread, 1
        if known is not None and "~" in known[len(thread) :]:
            n = int(known.rsplit("~", 1)[1])
        while True:
            record = self.guard.run_record(run_id)
            if record is None or record.status != "completed":
                break
            n += 1
            run_id = f"{thread}~{n}"
        with self._lock:
            self._turns[thread] = run_id
            self._turns.move_to_end(thread)
            while len(self._turns) > TURNS_KEPT:
                self._turns.popitem(last=False)
        return run_id

    def _open(self, thread: str) -> Run:
        """The entered run of the thread's turn; waits (interrupts) while it waits for a
        person. A turn that found its run completed (the agent ended) starts the next."""
        with self._lock:
            run_id = self._turns.get(thread)
            run = self._runs.get(run_id) if run_id is not None else None
            if run is not None and run.entered and not run.halted:
                return run
        while True:
            run_id = self._turn(thread)
            try:
                run = self.guard.run(
                    self.agent,
                    run_id=run_id,
                    metadata={"thread_id": thread},
                    on_failure=self.on_failure,
                ).start()
            except RunStateError as exc:
                if exc.status == "completed":
                    continue  # (completed meanwhile: the next turn)
                if exc.status in ("aborted", "aborting"):
                    raise RunHalted(
                        f"run {run_id} is {exc.status}; this thread cannot continue",
                        run_id=run_id,
                        status=exc.status,
                    ) from exc
                interrupt(self._summary(run_id, str(exc)))
                continue  # resumed: look again
            with self._lock:
                self._runs[run_id] = run
            return run

    def _summary(self, run_id: str, message: str) -> dict[str, Any]:
        record = self.guard.require_run(run_id)
        items = self.guard.review_items(run_id=run_id, status="open")
        return {
            "guardrail": {
                "run_id": run_id,
                "status": record.status,
                "reason": record.reason,
                "message": message,
                "review_items": [
                    {"id": i.id, "seq": i.seq, "reason": i.reason, "kind": i.kind} for i in items
                ],
                "next": f"review with `guardrail show {run_id}`, then `guardrail resume "
                f"{run_id}` (or abort) and continue the thread with Command(resume=...)",
            }
        }

    # A parallel call of this model turn failed and is halting the run in this process; it lets
    # the calls in flight finish first, so the store says "running" until its halt lands. That
    # is not a run a person resumed: a call refused meanwhile waits for the halt to land before
    # it looks at the run, instead of calling again.

    @staticmethod
    def _halt_landed(run: Run) -> None:
        waited = 0.0
        while run.halted and not run.halt_done and waited < SIBLING_WAIT:
            time.sleep(0.002)
            waited += 0.002

    @staticmethod
    async def _ahalt_landed(run: Run) -> None:
        waited = 0.0
        while run.halted and not run.halt_done and waited < SIBLING_WAIT:
            await asyncio.sleep(0.002)
            waited += 0.002

    def _wait(self, run_id: str) -> None:
        """Wait in place (up to ``wait_for_decision`` seconds) for a person to decide; then
        the thread goes on at once, or pauses (interrupts) as usual if nobody decided."""
        with suppress(TimeoutError):
            self.guard.wait_decision(run_id, timeout=self.wait_for_decision)

    async def _await(self, run_id: str) -> None:
        with suppress(TimeoutError):
            await self.guard.await_decision(run_id, timeout=self.wait_for_decision)

    def _halted(self, run_id: str, halt: RunHalted) -> None:
        """Pause the thread until a person has decided; returns once the run may go on."""
        with self._lock:
            self._runs.pop(run_id, None)
        summary = self._summary(run_id, str(halt))
        while True:
            status = self.guard.require_run(run_id).status
            if status == "running":
                return
            if status in ("aborted", "aborting", "completed"):
                raise RunHalted(
                    f"run {run_id} is {status}; this thread cannot continue",
                    run_id=run_id,
                    status=status,
                ) from halt
            # Raises GraphInterrupt the first time; on a resumed thread it hands back the
            # resume value, and the loop looks at the run again.
            interrupt(summary)

    # one tool call

    @staticmethod
    def _invalid(request: ToolCallRequest) -> bool:
        """Arguments the tool would refuse: let the tool node tell the model, guard nothing.

        Checked against the schema the model sees (without the injected parameters, which the
        tool node adds later): a tool with an injected parameter is guarded like any other."""
        tool = request.tool
        schema = getattr(tool, "tool_call_schema", None) if tool is not None else None
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            return False
        try:
            schema.model_validate(request.tool_call["args"])
        except ValidationError:
            return True
        return False

    @staticmethod
    def _injected(request: ToolCallRequest) -> dict[str, Any]:
        """What the tool's hooks may ask for by name: the agent's runtime and state."""
        return {"runtime": request.runtime, "state": request.state}

    @staticmethod
    def _recorded(message: ToolMessage | Command[Any]) -> dict[str, Any]:
        if not isinstance(message, ToolMessage):
            raise GuardrailError(
                "a tool returned a LangGraph Command; GuardrailMiddleware guards tools that "
                "return results",
                field="result",
            )
        if message.status == "error":
            raise ToolReportedError(str(message.content)[:2000])
        return {"content": message.content, "artifact": message.artifact}

    @staticmethod
    def _message(request: ToolCallRequest, recorded: Any) -> ToolMessage:
        content = recorded.get("content") if isinstance(recorded, dict) else recorded
        artifact = recorded.get("artifact") if isinstance(recorded, dict) else None
        return ToolMessage(
            content=content if content is not None else "",
            artifact=artifact,
            tool_call_id=request.tool_call["id"] or "",
            name=request.tool_call["name"],
        )

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        if self._invalid(request):
            return handler(request)
        thread = self._thread(request.runtime.config)
        call = request.tool_call
        answered: list[ToolMessage] = []  # the tool's own message, when it ran now

        def execute(**_: Any) -> dict[str, Any]:
            message = handler(request)
            recorded = self._recorded(message)
            answered.append(message)  # type: ignore[arg-type]  # _recorded checked it
            return recorded

        while True:
            run = self._open(thread)
            answered.clear()
            try:
                recorded = run.call(
                    call["name"],
                    call["args"],
                    fn=execute,
                    call_id=call["id"],
                    injected=self._injected(request),
                )
            except RunHalted as halt:
                self._halt_landed(run)
                if self.wait_for_decision:
                    self._wait(run.id)
                self._halted(run.id, halt)
                continue
            return answered[-1] if answered else self._message(request, recorded)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        if self._invalid(request):
            return await handler(request)
        thread = self._thread(request.runtime.config)
        call = request.tool_call
        answered: list[ToolMessage] = []  # the tool's own message, when it ran now

        async def execute(**_: Any) -> dict[str, Any]:
            message = await handler(request)
            recorded = self._recorded(message)
            answered.append(message)  # type: ignore[arg-type]  # _recorded checked it
            return recorded

        while True:
            run = self._open(thread)
            answered.clear()
            try:
                recorded = await run.acall(
                    call["name"],
                    call["args"],
                    fn=execute,
                    call_id=call["id"],
                    injected=self._injected(request),
                )
            except RunHalted as halt:
                await self._ahalt_landed(run)
                if self.wait_for_decision:
                    await self._await(run.id)
                self._halted(run.id, halt)
                continue
            return answered[-1] if answered else self._message(request, recorded)

    # the end of the agent

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._complete(runtime)
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._complete(runtime)
        return None

    def _complete(self, runtime: Any) -> None:
        config = getattr(runtime, "config", None)
        if config is None:
            from langgraph.config import get_config

            config = get_config()
        thread = self._thread(config)
        with self._lock:
            run_id = self._turns.get(thread)
            if run_id is None:  # (forgotten among many threads: its run is still entered)
                run_id = next((r for r in self._runs if _turn_of(r, thread)), None)
            run = self._runs.pop(run_id, None) if run_id is not None else None
        if run is not None and run.entered and not run.halted:
            run.complete()


def _turn_of(run_id: str, thread: str) -> bool:
    """Whether ``run_id`` is a turn of ``thread`` (``thread``, ``thread~2``, ...)."""
    return run_id == thread or (
        run_id.startswith(thread + "~") and run_id[len(thread) + 1 :].isdigit()
    )
