"""wrap_tools runs LangChain's tool machinery once, around the guard around the inner tool's own
``_run`` / ``_arun``: callbacks fire once, the config and run manager reach the inner tool,
injected parameters are passed and not recorded, content_and_artifact and handle_tool_error
behave as the inner tool's own invoke would, and tool-call ids are the idempotency keys."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolArg, ToolException, tool
from pydantic import BaseModel

from guardrail import Guard, RunHalted
from guardrail.adapters.langchain import wrap_tools


class Starts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended = 0

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, **kwargs: Any) -> None:
        self.started.append(serialized["name"])

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        self.ended += 1


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "args": args, "id": call_id}


def test_callbacks_fire_once_and_the_config_reaches_the_tool(guard: Guard) -> None:
    seen: list[Any] = []

    @tool
    def lookup(item: str, config: RunnableConfig) -> str:
        """Look up an item."""
        seen.append(config.get("metadata", {}).get("who"))
        return f"found {item}"

    guard.policy("lookup", effect="read_only")
    [wrapped] = wrap_tools(guard, [lookup])
    starts = Starts()
    with guard.run() as run:
        out = wrapped.invoke(
            call("lookup", {"item": "book"}, "tc-1"),
            {"callbacks": [starts], "metadata": {"who": "ann"}},
        )
    assert isinstance(out, ToolMessage)
    assert (out.content, out.tool_call_id, out.name) == ("found book", "tc-1", "lookup")
    assert starts.started == ["lookup"]  # once: the inner tool's machinery is not run again
    assert starts.ended == 1
    assert seen == ["ann"]
    [action] = guard.log(run.id).actions
    assert (action.call_id, action.args) == ("tc-1", {"item": "book"})


def test_the_inner_tools_own_callbacks_and_run_manager(guard: Guard) -> None:
    starts = Starts()
    managers: list[Any] = []

    class Counter(BaseTool):
        name: str = "count"
        description: str = "Count to n."

        def _run(self, n: int, run_manager: Any = None) -> int:
            managers.append(run_manager)
            return n + 1

    guard.policy("count", effect="read_only")
    [wrapped] = wrap_tools(guard, [Counter(callbacks=[starts], tags=["mine"])])
    assert wrapped.tags == ["mine"]
    with guard.run():
        assert wrapped.invoke({"n": 1}) == 2
    assert starts.started == ["count"]
    assert len(managers) == 1 and managers[0] is not None


def test_injected_arguments_reach_the_tool_and_are_not_recorded(guard: Guard) -> None:
    got: list[tuple[str, str]] = []

    @tool
    def send(to: str, token: Annotated[str, InjectedToolArg]) -> str:
        """Send a message."""
        got.append((to, token))
        return "sent"

    guard.policy("send", effect="irreversible", review={"kind": "mark"})
    [wrapped] = wrap_tools(guard, [send])
    with guard.run() as run:
        out = wrapped.invoke(call("send", {"to": "ada", "token": "s3cret"}, "tc-9"))
    assert out.content == "sent"
    assert got == [("ada", "s3cret")]
    [action] = guard.log(run.id).actions
    assert action.args == {"to": "ada"}


def test_content_and_artifact_and_its_replay(guard: Guard) -> None:
    ran: list[int] = []

    @tool(response_format="content_and_artifact")
    def search(q: str) -> tuple[str, dict[str, Any]]:
        """Search."""
        ran.append(1)
        return f"1 hit for {q}", {"hits": [q]}

    guard.policy("search", effect="read_only")
    [wrapped] = wrap_tools(guard, [search])
    with guard.run():
        first = wrapped.invoke(call("search", {"q": "x"}, "tc-1"))
        again = wrapped.invoke(call("search", {"q": "x"}, "tc-1"))  # same id: replayed
    assert (first.content, first.artifact) == ("1 hit for x", {"hits": ["x"]})
    assert (again.content, again.artifact) == ("1 hit for x", {"hits": ["x"]})
    assert ran == [1]


def test_handled_tool_errors_are_answers_unhandled_ones_halt(guard: Guard) -> None:
    @tool
    def flaky(n: int) -> str:
        """Fail."""
        raise ToolException(f"no {n}")

    handled = flaky.model_copy(update={"handle_tool_error": True, "name": "handled"})
    guard.policy("handled", effect="read_only")
    guard.policy("flaky", effect="irreversible", review={"kind": "mark"})
    [soft, hard] = wrap_tools(guard, [handled, flaky])
    with guard.run() as run:
        assert soft.invoke(call("handled", {"n": 1}, "tc-1")).content == "no 1"
    assert [a.state for a in guard.log(run.id).actions] == ["succeeded"]
    with pytest.raises(RunHalted), guard.run() as halted:
        hard.invoke(call("flaky", {"n": 2}, "tc-2"))
    # a failure that proves nothing: in doubt, for a person (as through inner.invoke)
    assert [a.state for a in guard.log(halted.id).actions] == ["in_doubt"]


def test_async_tools_run_once_through_the_guard(guard: Guard) -> None:
    ran: list[str] = []

    @tool
    async def shout(text: str) -> str:
        """Shout."""
        ran.append(text)
        return text.upper()

    guard.policy("shout", effect="read_only")
    [wrapped] = wrap_tools(guard, [shout])
    starts = Starts()

    async def scenario() -> list[Any]:
        async with guard.run():
            return [
                await wrapped.ainvoke(
                    call("shout", {"text": "hi"}, "a-1"), {"callbacks": [starts]}
                ),
                await wrapped.ainvoke(call("shout", {"text": "hi"}, "a-1")),
            ]

    first, again = asyncio.run(scenario())
    assert (first.content, again.content) == ("HI", "HI")
    assert ran == ["hi"]
    assert starts.started == ["shout"]


def test_a_sync_only_tool_called_async(guard: Guard) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    guard.policy("add", effect="read_only")
    [wrapped] = wrap_tools(guard, [add])

    async def scenario() -> Any:
        async with guard.run():
            return await wrapped.ainvoke({"a": 1, "b": 2})

    assert asyncio.run(scenario()) == 3


def test_return_direct_and_schema_are_kept(guard: Guard) -> None:
    @tool(return_direct=True)
    def done(note: str) -> str:
        """Finish."""
        return note

    [wrapped] = wrap_tools(guard, [done])
    assert wrapped.return_direct is True
    ours, theirs = wrapped.tool_call_schema, done.tool_call_schema
    assert isinstance(ours, type) and issubclass(ours, BaseModel)
    assert isinstance(theirs, type) and issubclass(theirs, BaseModel)
    assert ours.model_json_schema() == theirs.model_json_schema()


def test_invalid_input_is_answered_by_the_tools_own_setting(guard: Guard) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    lenient = add.model_copy(update={"handle_validation_error": "give two numbers"})
    guard.policy("add", effect="read_only")
    [strict, answered] = wrap_tools(guard, [add, lenient])
    with guard.run() as run:
        out = answered.invoke(call("add", {"a": "x", "b": 1}, "tc-1"))
        with pytest.raises(ValueError, match="validation error"):
            strict.invoke(call("add", {"a": "x", "b": 1}, "tc-2"))
    assert (out.content, out.status) == ("give two numbers", "error")
    assert guard.log(run.id).actions == []  # nothing ran, nothing recorded


def test_a_single_string_input_tool(guard: Guard) -> None:
    from langchain_core.tools import Tool

    seen: list[str] = []

    def search(query: str) -> str:
        seen.append(query)
        return f"results for {query}"

    plain = Tool(name="search", func=search, description="Search the web.")
    guard.policy("search", effect="read_only")
    [wrapped] = wrap_tools(guard, [plain])
    with guard.run() as run:
        assert wrapped.invoke("books") == "results for books"
    assert seen == ["books"]
    [action] = guard.log(run.id).actions
    assert action.args == {"tool_input": "books"}
