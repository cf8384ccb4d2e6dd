"""MCP: serve an MCP server's tools through the guard (``guardrail mcp-proxy``).

::

    guardrail mcp-proxy --policy policies.yaml --store sqlite:////srv/guardrail.db \\
        -- npx -y @modelcontextprotocol/server-filesystem /srv/files

The proxy starts the upstream server over stdio, lists its tools and serves the same tools
(names, titles, descriptions, input and output schemas, annotations) to the MCP client on its own
stdin and stdout. Every ``tools/call`` goes through the guard:

- **Runs.** One run per proxy session (with stdio: per client connection), created at the first
  call and completed when the client disconnects. ``run_id=`` (``--run-id``) continues a run
  instead, e.g. one a person resumed after the client went away (a run id that does not exist
  yet names the new run). ``on_failure="hold"`` (``--on-failure hold``) undoes nothing until a
  person decides, for clients that carry on after the review rather than start over. Calls in a
  run go through the guard one at a time, in the order they arrive, so the log's order is the
  order of effects and a halt never races a call in flight.
- **Policies.** Declared policies (files, packs, code) win. For the other tools, the annotations
  ``readOnlyHint``, ``destructiveHint`` and ``idempotentHint`` seed defaults (``guard.hint``:
  read-only, or irreversible with a review). A tool with neither is refused (strict guard).
  The proxy does not start when an undo it could need is missing: a policy's undo tool that the
  server does not have (nor the guard), or an undo of the continued run (``run_id=``) that this
  guard lacks; ``force=True`` (``--force``) serves anyway, and those undos become review items.
- **Results.** The upstream's ``CallToolResult`` as JSON (``content``, ``structuredContent``,
  ``isError``) is the recorded result, so policy paths read ``result.structuredContent.id`` or
  ``result.content.0.text``; undo tools (``undo: {tool: ...}``) are the upstream's tools.
- **Failures.** An ``isError`` result or a protocol error from the upstream is a failure: the
  guard compensates and halts, and the client gets an ``isError`` result saying the run awaits
  review (run id, ``guardrail show RUN``), with ``_meta`` ``guardrail/run_id`` and
  ``guardrail/status``. Every later call in the run is refused the same way, without reaching
  the upstream, until a person resumes the run; then calls run again, and calls the run already
  did (succeeded, not compensated) return their recorded result instead of running twice.
- **Call ids.** A JSON-RPC request id is a per-connection counter: a client never reuses it for
  a retry and a new connection starts it again, so it can neither deduplicate a replay nor name a
  call across sessions. The idempotency key is therefore the guard's default (tool, arguments
  and their occurrence in the run), or the client's own tool-call id when it sends one as
  ``_meta["guardrail/call_id"]`` (e.g. the model's ``tool_call_id``).
- **Trace context.** The W3C ``traceparent``/``tracestate`` in a request's ``_meta`` (SEP-414)
  parents the guard's ``execute_tool`` span, is recorded on the action (``trace_id``), and is
  passed on in the ``_meta`` of the upstream request, so client, proxy and server share one
  trace. Without a tracer provider the client's context is passed through unchanged.
- **Arguments.** Arguments that do not match the tool's ``inputSchema`` are refused before the
  guard (nothing runs, nothing is recorded, the run goes on), so a model can correct a typo
  without halting its run.
- **Cancellation.** Once a guarded call has started it runs to the end and is recorded, even if
  the client cancels the request or disconnects: the log never holds a call whose outcome it
  does not know.

Only tools are proxied (not resources or prompts), listed once at start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from jsonschema import SchemaError  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from mcp import ClientSession, StdioServerParameters, stdio_client, stdio_server
from mcp import types as mcp_types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from referencing import Registry

from guardrail.audit import ActionLog
from guardrail.decisions import missing_undos, policy_mismatch
from guardrail.errors import GuardrailError, PolicyError, RunHalted, RunStateError
from guardrail.guard import Guard
from guardrail.policy import UndoTool
from guardrail.run import Run

log = logging.getLogger("guardrail.mcp")

CALL_ID_META = "guardrail/call_id"
RUN_ID_META = "guardrail/run_id"
STATUS_META = "guardrail/status"


class ToolFailed(Exception):
    """The upstream server answered a ``tools/call`` with ``isError: true``; the message is the
    text it returned."""

    def __init__(self, tool: str, text: str) -> None:
        super().__init__(text or f"{tool} returned an error without a message")
        self.tool = tool
        self.text = text


class ServerUnavailable(GuardrailError):
    """The upstream MCP server did not start or did not answer ``initialize``/``tools/list``."""


def seed_hints(guard: Guard, tools: Sequence[mcp_types.Tool]) -> list[str]:
    """Default policies from the tools' annotations, for tools with no declared policy.

    Returns the names of the tools that got one. Annotations are the server author's claims,
    so they never replace a policy from a file, a pack or code.
    """
    hinted = []
    for tool in tools:
        hints = tool.annotations
        if hints is None or guard.find_policy(tool.name) is not None:
            continue
        if (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (None,) * 3:
            continue  # only a title or openWorldHint: no claim about effects
        guard.hint(
            tool.name,
            read_only=hints.read_only_hint,
            destructive=hints.destructive_hint,
            idempotent=hints.idempotent_hint,
        )
        hinted.append(tool.name)
    return hinted


async def list_all_tools(session: ClientSession) -> list[mcp_types.Tool]:
    """Every tool of the server, following pagination."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def error_result(
    text: str, *, run_id: str | None = None, status: str | None = None
) -> mcp_types.CallToolResult:
    """A tool error for the client, with the run it concerns in ``_meta``."""
    meta = {k: v for k, v in ((RUN_ID_META, run_id), (STATUS_META, status)) if v is not None}
    return mcp_types.CallToolResult(
        content=[mcp_types.TextContent(type="text", text=text)],
        is_error=True,
        _meta=meta or None,
    )


class Proxy:
    """Serves ``tools`` of the ``upstream`` session to MCP clients, every call through ``guard``.

    Example (what :func:`serve` does)::

        async with stdio_client(params) as (r, w), ClientSession(r, w) as upstream:
            info = await upstream.initialize()
            proxy = Proxy(guard, upstream, await list_all_tools(upstream))
            server = proxy.server(info.server_info, info.instructions)
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
            proxy.close()
    """

    def __init__(
        self,
        guard: Guard,
        upstream: ClientSession,
        tools: Sequence[mcp_types.Tool],
        *,
        agent: str = "mcp",
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        on_failure: str | None = None,
    ) -> None:
        self.guard = guard
        self.upstream = upstream
        self.tools = {tool.name: tool for tool in tools}
        self.agent = agent
        self.run_id = run_id
        self.metadata = dict(metadata or {})
        self.hinted = seed_hints(guard, tools)
        self.on_failure = on_failure
        self._run_now: Run | None = None
        self._lock = anyio.Lock()
        self._callers = {name: self._caller(name) for name in self.tools}
        self._validators = {name: _validator(tool) for name, tool in self.tools.items()}
        for name, caller in self._callers.items():
            guard.register(caller, name=name)  # undo tools of policy files, by name

    # -- MCP handlers ------------------------------------------------------------------------

    def server(
        self, info: mcp_types.Implementation | None = None, instructions: str | None = None
    ) -> Server[Any]:
        """A low-level MCP server with this proxy's ``tools/list`` and ``tools/call``, presenting
        itself as the upstream (``info``, ``instructions``)."""
        return Server(
            info.name if info is not None else "guardrail-mcp-proxy",
            version=info.version if info is not None else "",
            title=info.title if info is not None else None,
            instructions=instructions,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=list(self.tools.values()))

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        name, arguments = params.name, dict(params.arguments or {})
        if name not in self.tools:
            return error_result(f"guardrail: the MCP server has no tool {name!r}; nothing ran")
        problem = self._invalid(name, arguments)
        if problem is not None:
            return error_result(
                f"guardrail: the arguments of {name} do not match its input schema: {problem}; "
                "nothing ran. Fix the arguments and call it again."
            )
        call_id = (params.meta or {}).get(CALL_ID_META)
        result: mcp_types.CallToolResult | None = None
        async with self._lock:
            with anyio.CancelScope(shield=True):  # a started call is always finished and recorded
                result = await self._guarded(name, arguments, str(call_id) if call_id else None)
        assert result is not None
        return result

    async def _guarded(
        self, name: str, arguments: dict[str, Any], call_id: str | None
    ) -> mcp_types.CallToolResult:
        try:
            run = self._run()
        except RunStateError as exc:
            return error_result(str(exc), run_id=exc.run_id, status=exc.status)
        try:
            value = await run.acall(name, arguments, fn=self._callers[name], call_id=call_id)
        except RunHalted as halt:
            return self._halted(halt)
        except GuardrailError as exc:  # refused before anything ran, or a rejected approval
            return error_result(f"guardrail: {exc}", run_id=run.id, status="running")
        return mcp_types.CallToolResult.model_validate(value)

    def _invalid(self, name: str, arguments: dict[str, Any]) -> str | None:
        validator = self._validators[name]
        if validator is None:
            return None
        error = best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{error.message} (at {where})" if where else str(error.message)

    # -- the session's run -------------------------------------------------------------------

    def _run(self) -> Run:
        """The run to call in: opened at the first call, re-opened after a person resumes it."""
        run = self._run_now
        if run is not None and not run.halted:
            return run
        run_id = self.run_id
        if run is not None:
            record = self.guard.require_run(run.id)
            if record.status != "running":
                raise RunStateError(
                    self._refusal(record.id, record.status, record.decided_by),
                    run_id=record.id,
                    status=record.status,
                )
            self._run_now = None
            run_id = record.id
        opened = self.guard.run(
            self.agent, run_id=run_id, metadata=self.metadata, on_failure=self.on_failure
        ).start()  # RunStateError while the run still waits for a person
        self._run_now = opened
        self.run_id = opened.id
        log.info("calls go into run %s", opened.id)
        return opened

    def _refusal(self, run_id: str, status: str, decided_by: str | None) -> str:
        if status in ("pending_review", "awaiting_approval", "compensating"):
            return (
                f"guardrail: run {run_id} is {status} and awaits review; this call did not run. "
                f"Calls in this run are refused until a person inspects it (`guardrail show "
                f"{run_id}`) and resumes it (`guardrail resume {run_id}`)."
            )
        who = f" by {decided_by}" if decided_by else ""
        return (
            f"guardrail: run {run_id} is {status}{who}; this call did not run and no more calls "
            "run in this session. Reconnect the MCP server to start a new run."
        )

    def _halted(self, halt: RunHalted) -> mcp_types.CallToolResult:
        log = self.guard.log(halt.run_id)
        open_items = [i for i in log.review_items if i.status == "open"]
        if halt.status == "awaiting_approval":
            what = f"guardrail: {halt}"
        elif any(i.reason == "held" for i in open_items):
            what = (
                f"guardrail halted run {halt.run_id}: {log.run.reason or halt}. Nothing was "
                "undone: the run holds its failure for a person (an abort undoes what it can)."
            )
        else:
            what = f"guardrail halted run {halt.run_id}: {log.run.reason or halt}. " + _outcome(log)
        return error_result(
            f"{what} The run awaits review: a person inspects it with `guardrail show "
            f"{halt.run_id}` and resumes it (`guardrail resume {halt.run_id}`) or aborts it. "
            "Until then every call in this run is refused; do not try to work around it.",
            run_id=halt.run_id,
            status=halt.status,
        )

    def close(self) -> None:
        """End the session: its run is completed if it is still running, else left as it is
        (awaiting a person)."""
        if self._run_now is not None:
            self._run_now.complete()
            self._run_now = None

    # -- the upstream ------------------------------------------------------------------------

    def _caller(self, name: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        upstream = self.upstream

        async def call_upstream(**arguments: Any) -> dict[str, Any]:
            result = await upstream.call_tool(name, arguments)
            if result.is_error:
                raise ToolFailed(name, _text(result))
            return result.model_dump(by_alias=True, mode="json", exclude_none=True)

        call_upstream.__name__ = call_upstream.__qualname__ = name
        return call_upstream


def _outcome(log: ActionLog) -> str:
    """What this halt's compensation did, truthfully: what was undone, which undos failed, what
    waits for a person (by reason). The halt's undos are those started after its failing call
    (the proxy runs one call at a time), so undos of an earlier halt of the run are not counted.
    """
    tools = {a.seq: a.tool for a in log.actions}
    since = max((a.started_at for a in log.actions), default=0.0)
    mine = sorted(
        (c for c in log.compensations if c.started_at >= since),
        key=lambda c: c.seq,
        reverse=True,
    )
    undone = [tools.get(c.seq, "?") for c in mine if c.state == "succeeded"]
    failed = [tools.get(c.seq, "?") for c in mine if c.state != "succeeded"]
    waiting: dict[str, int] = {}
    for item in log.review_items:
        if item.status == "open":
            waiting[item.reason] = waiting.get(item.reason, 0) + 1
    parts = []
    if undone:
        parts.append(f"Undone, newest first: {', '.join(undone)}.")
    if failed:
        parts.append(
            f"Undo failed, newest first: {', '.join(failed)} (still in effect; a person must "
            "undo it)."
        )
    if not undone and not failed:
        parts.append("Nothing was undone." if waiting else "Nothing needed undoing.")
    count = sum(waiting.values())
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(waiting.items()))
    parts.append(f"{count} item(s) wait for a person" + (f" ({reasons})." if count else "."))
    return " ".join(parts)


def check_undos(guard: Guard, tools: Sequence[str], run_id: str | None, *, force: bool) -> None:
    """Refuse to serve (PolicyError) when an undo the proxy could need is missing: an undo tool
    of a served tool's policy that neither the server nor the guard has, or an undo of the
    continued run that this guard lacks. With ``force`` log them and go on."""
    problems = []
    for name in tools:
        policy = guard.find_policy(name)
        undo = policy.undo if policy is not None else None
        if isinstance(undo, UndoTool) and guard.tool_function(undo.tool) is None:
            problems.append(
                f"the undo of {name} is the tool {undo.tool!r}, which this MCP server does not "
                "have (nor the guard)"
            )
    record = guard.run_record(run_id) if run_id else None
    if record is not None:
        mismatch = policy_mismatch(guard, record)
        if mismatch:
            log.warning("%s", mismatch)
        problems += [
            f"run {record.id}, action {s.seq} ({s.tool}): {s.detail}"
            for s in missing_undos(guard, guard.actions(record.id))
        ]
    if not problems:
        return
    if force:
        log.warning("serving without these undos (force): %s", "; ".join(problems))
        return
    raise PolicyError(
        "; ".join(problems) + ". Load the policies or the application's guard that provide "
        "them (--policy, --pack, --app), or pass --force to serve anyway (what would need "
        "them becomes a review item)",
        field="undo",
    )


def _validator(tool: mcp_types.Tool) -> Any:
    """A compiled validator of the tool's input schema; None if the schema itself is invalid
    (then the upstream server judges the arguments alone)."""
    schema = tool.input_schema
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        log.warning("%s: its input schema is not valid JSON Schema (%s)", tool.name, exc.message)
        return None
    return cls(schema, registry=Registry())  # $refs resolve within the schema only


def _text(result: mcp_types.CallToolResult) -> str:
    parts = [c.text for c in result.content if isinstance(c, mcp_types.TextContent)]
    return " ".join(parts)[:2000]


async def serve(
    guard: Guard,
    command: Sequence[str],
    *,
    agent: str = "mcp",
    run_id: str | None = None,
    on_failure: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    force: bool = False,
) -> str | None:
    """Run the upstream ``command`` and serve its tools on stdin/stdout until the client leaves.

    ``run_id`` names the session's run (continued if it exists, e.g. after a person resumed
    it); ``on_failure="hold"`` holds every failure for a person instead of compensating at
    once. The upstream inherits this process's environment (pass ``env`` to replace it).
    Raises PolicyError before serving when an undo could not run (see :func:`check_undos`;
    ``force`` serves anyway). Returns the id of the session's run, or None when the client
    made no call.
    """
    if not command:
        raise ValueError("no upstream MCP server command given")
    params = StdioServerParameters(
        command=command[0],
        args=list(command[1:]),
        env=dict(os.environ) if env is None else env,
        cwd=cwd,
    )
    async with (
        stdio_client(params) as (up_read, up_write),
        ClientSession(up_read, up_write) as upstream,
    ):
        try:
            info = await upstream.initialize()
            tools = await list_all_tools(upstream)
        except MCPError as exc:
            raise ServerUnavailable(
                f"the MCP server failed initialize and tools/list ({exc.error.message}); its "
                "own messages, if any, are above"
            ) from exc
        server_info = info.server_info
        proxy = Proxy(
            guard,
            upstream,
            tools,
            agent=agent,
            run_id=run_id,
            on_failure=on_failure,
            metadata={"mcp.server": server_info.name, "mcp.server.version": server_info.version},
        )
        check_undos(guard, list(proxy.tools), run_id, force=force)
        unguarded = [t for t in proxy.tools if guard.find_policy(t) is None]
        log.info(
            "serving %d tool(s) of %s through the guard (%d with hint defaults%s)",
            len(tools),
            f"{server_info.name} {server_info.version}".strip(),
            len(proxy.hinted),
            f"; no policy, refused: {', '.join(unguarded)}" if unguarded else "",
        )
        server = proxy.server(server_info, info.instructions)
        try:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        finally:
            proxy.close()
        return proxy.run_id
