"""LangChain adapter with real framework objects: wrap_tools, and GuardrailMiddleware in
create_agent with a SQLite checkpointer (halt -> interrupt -> review -> resume on the thread)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tools import tool
from langgraph.types import Command

from guardrail import Guard, RunHalted
from guardrail.adapters.langchain import wrap_tools

sys.path.insert(0, str(Path(__file__).parent))
from langchain_shop import THREAD, World, build

HERE = Path(__file__).parent


def test_wrap_tools_keeps_names_and_schemas_sync_and_async(guard: Guard) -> None:
    ran: list[str] = []

    @tool
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        ran.append("add")
        return a + b

    @tool
    async def shout(text: str) -> str:
        """Shout the text."""
        ran.append("shout")
        return text.upper()

    guard.policy("add", effect="read_only")
    guard.policy("shout", effect="irreversible", review={"kind": "mark"})
    wrapped = wrap_tools(guard, [add, shout])
    for before, after in zip([add, shout], wrapped, strict=True):
        assert (after.name, after.description) == (before.name, before.description)
        assert after.args == before.args
        assert (
            after.tool_call_schema.model_json_schema()
            == before.tool_call_schema.model_json_schema()
        )
    with guard.run() as run:
        assert wrapped[0].invoke({"a": 1}) == 3
        call = {"name": "shout", "args": {"text": "hi"}, "id": "tc-1", "type": "tool_call"}
        assert asyncio.run(wrapped[1].ainvoke(call)).content == "HI"
        assert asyncio.run(wrapped[1].ainvoke(call)).content == "HI"  # same call id: replayed
    assert ran == ["add", "shout"]
    actions = guard.log(run.id).actions
    assert [(a.tool, a.call_id, a.state) for a in actions] == [
        ("add", None, "succeeded"),
        ("shout", "tc-1", "succeeded"),
    ]


def child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE / "langchain_shop.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_halt_pauses_the_thread_and_resume_survives_a_restart(
    sqlite_url: str, tmp_path: Path
) -> None:
    checkpoints, world_path = str(tmp_path / "checkpoints.db"), tmp_path / "world.json"
    world = World(world_path)
    assert child("start", sqlite_url, checkpoints, str(world_path)) == {"interrupted": True}
    with Guard(store=sqlite_url) as guard:
        log = guard.log("thread-1")
        assert log.run.status == "pending_review"  # held: nothing undone before review
        assert sorted((a.tool, a.state, a.call_id) for a in log.actions) == [
            ("create_order", "succeeded", "call-1"),
            ("send_email", "succeeded", "call-2"),
            ("ship", "failed", "call-3"),
        ]
        # parallel calls of one model turn are numbered in the order they started
        started = [a.started_at for a in log.actions]
        assert log.actions[0].tool == "create_order" and started == sorted(started)
        assert [i.reason for i in log.review_items] == ["held"]
        world.change("ship_ok", lambda _: True)  # the carrier is back
        guard.resume("thread-1", by="ann", note="carrier is back")
        [held] = guard.log("thread-1").review_items  # closed by the resume it asked for
        assert (held.status, held.resolution, held.resolved_by) == ("resolved", "resumed", "ann")
    # a new process continues the same thread from its checkpoint
    assert child("resume", sqlite_url, checkpoints, str(world_path)) == {"answer": "all done"}
    state = world.load()
    assert (state["orders"], state["emails"], state["shipped"]) == (["o-book"], 1, 1)
    with Guard(store=sqlite_url) as guard:
        log = guard.log("thread-1")
        assert log.run.status == "completed"
        assert sorted((a.tool, a.state) for a in log.actions) == [
            ("create_order", "succeeded"),
            ("send_email", "succeeded"),
            ("ship", "failed"),
            ("ship", "succeeded"),
        ]
        assert guard.verify("thread-1").ok


def test_abort_undoes_and_the_thread_stops(sqlite_url: str, tmp_path: Path) -> None:
    world = World(tmp_path / "world.json")
    guard, agent = build(sqlite_url, str(tmp_path / "ck.db"), world)
    out = agent.invoke({"messages": [{"role": "user", "content": "buy"}]}, THREAD)
    assert out["__interrupt__"][0].value["guardrail"]["status"] == "pending_review"
    guard.abort("thread-1", by="ann", reason="customer left")
    assert world.load()["cancelled"] == ["o-book"]
    log = guard.log("thread-1")
    assert log.action(1).state == "compensated"
    assert sorted(i.reason for i in log.review_items) == ["held", "irreversible"]
    closed = [(i.status, i.resolution) for i in log.review_items if i.reason == "held"]
    assert closed == [("resolved", "aborted")]  # the abort is what the held item asked for
    with pytest.raises(RunHalted, match="aborted"):
        agent.invoke(Command(resume="go on"), THREAD)
    assert world.load()["shipped"] == 0
    guard.close()


def test_async_agent(sqlite_url: str, tmp_path: Path) -> None:
    world = World(tmp_path / "world.json")
    guard, agent = build(sqlite_url, str(tmp_path / "ck.db"), world, is_async=True)

    async def scenario() -> tuple[Any, Any]:
        first = await agent.ainvoke({"messages": [{"role": "user", "content": "buy"}]}, THREAD)
        world.change("ship_ok", lambda _: True)
        guard.resume("thread-1", by="ann")
        return first, await agent.ainvoke(Command(resume="go"), THREAD)

    first, second = asyncio.run(scenario())
    assert first["__interrupt__"]
    assert second["messages"][-1].content == "all done"
    state = world.load()
    assert (state["orders"], state["emails"], state["shipped"]) == (["o-book"], 1, 1)
    guard.close()


def test_a_thread_keeps_calling_tools_turn_after_turn(sqlite_url: str, tmp_path: Path) -> None:
    """A second turn on the same thread (a new user message) that calls a tool starts the
    thread's next run once the first turn's run completed."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langchain_shop import ScriptedModel
    from langgraph.checkpoint.memory import InMemorySaver

    from guardrail.adapters.langchain import GuardrailMiddleware

    guard = Guard(store=sqlite_url)
    guard.policy("note", effect="reversible", undo=lambda: None)
    made: list[str] = []

    @tool
    def note(text: str) -> str:
        """Write a note."""
        made.append(text)
        return f"noted {text}"

    turns = [
        AIMessage(content="", tool_calls=[{"name": "note", "args": {"text": "a"}, "id": "c1"}]),
        AIMessage(content="first done"),
        AIMessage(content="", tool_calls=[{"name": "note", "args": {"text": "b"}, "id": "c2"}]),
        AIMessage(content="second done"),
    ]
    agent = create_agent(
        ScriptedModel(messages=iter(turns)),
        [note],
        middleware=[GuardrailMiddleware(guard, agent="notes")],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "chat-7"}}
    agent.invoke({"messages": [{"role": "user", "content": "note a"}]}, config)
    agent.invoke({"messages": [{"role": "user", "content": "note b"}]}, config)
    assert made == ["a", "b"]
    first, second = guard.require_run("chat-7"), guard.require_run("chat-7~2")
    assert (first.status, second.status) == ("completed", "completed")
    assert second.meta == {"thread_id": "chat-7"}
    assert [a.tool for a in guard.log("chat-7~2").actions] == ["note"]
    guard.close()


def test_the_middleware_can_wait_in_place_for_the_decision(sqlite_url: str) -> None:
    """With wait_for_decision, a resume made while the step waits lets it carry on: the
    failed call runs again after the person fixed the cause, and no interrupt is seen."""
    import threading

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_shop import ScriptedModel
    from langgraph.checkpoint.memory import InMemorySaver

    from guardrail.adapters.langchain import GuardrailMiddleware

    halted = threading.Event()
    guard = Guard(store=sqlite_url, on_halt=lambda run: halted.set())
    guard.policy("ship", effect="read_only", retry={"attempts": 1})
    carrier_up = [False]

    @tool
    def ship(order: str) -> str:
        """Ship an order."""
        if not carrier_up[0]:
            raise ConnectionError("the carrier is down")
        return f"shipped {order}"

    turns = [
        AIMessage(content="", tool_calls=[{"name": "ship", "args": {"order": "o1"}, "id": "c1"}]),
        AIMessage(content="done"),
    ]
    agent = create_agent(
        ScriptedModel(messages=iter(turns)),
        [ship],
        middleware=[GuardrailMiddleware(guard, agent="shop", wait_for_decision=60)],
        checkpointer=InMemorySaver(),
    )

    def reviewer() -> None:
        assert halted.wait(60)
        carrier_up[0] = True  # the person fixed the cause, then resumes
        guard.resume("t-wait", by="ana")

    person = threading.Thread(target=reviewer)
    person.start()
    out = agent.invoke(
        {"messages": [{"role": "user", "content": "ship o1"}]},
        {"configurable": {"thread_id": "t-wait"}},
    )
    person.join(60)
    assert "__interrupt__" not in out
    assert out["messages"][-1].content == "done"
    assert any(getattr(m, "content", "") == "shipped o1" for m in out["messages"])
    assert guard.require_run("t-wait").status == "completed"
    guard.close()


def test_the_middleware_remembers_a_bounded_number_of_threads(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server sees endless threads: the middleware keeps the latest turn of the recent ones
    only, and a forgotten thread's run still completes and its next turn is found again."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_shop import ScriptedModel
    from langgraph.checkpoint.memory import InMemorySaver

    from guardrail.adapters import langchain_middleware as adapter

    monkeypatch.setattr(adapter, "TURNS_KEPT", 2)
    guard = Guard(store=sqlite_url)
    guard.policy("note", effect="read_only")

    @tool
    def note(text: str) -> str:
        """Write a note."""
        return text

    def script() -> list[AIMessage]:
        out = []
        for i in range(6):
            call = {"name": "note", "args": {"text": str(i)}, "id": f"c{i}"}
            out += [AIMessage(content="", tool_calls=[call]), AIMessage(content="ok")]
        return out

    middleware = adapter.GuardrailMiddleware(guard, agent="notes")
    agent = create_agent(
        ScriptedModel(messages=iter(script())),
        [note],
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    for thread in ["a", "b", "c", "d", "a"]:  # "a" is forgotten, then its second turn
        agent.invoke(
            {"messages": [{"role": "user", "content": "note"}]},
            {"configurable": {"thread_id": thread}},
        )
    assert len(middleware._turns) <= 2 and not middleware._runs
    statuses = {r.id: r.status for r in guard.runs()}
    assert statuses == {t: "completed" for t in ["a", "b", "c", "d", "a~2"]}
    guard.close()
