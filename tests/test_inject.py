"""Injected parameters (a connection, an inbox, a framework's context): passed to the tool and to
its hooks, never recorded, hashed or part of the dedup key, for plain functions and for the
LangChain and OpenAI Agents adapters."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import pytest
from agents import Agent, RunConfig, RunContextWrapper, Runner, function_tool
from agents.testing import ScriptedModel as OAScriptedModel
from agents.testing import assistant_message, function_call
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage
from langchain_core.tools import InjectedToolArg, tool
from langchain_shop import ScriptedModel as LCScriptedModel
from langgraph.checkpoint.memory import InMemorySaver

from guardrail import Guard, Injected, Review, RunHalted, UndoTool
from guardrail.adapters.langchain import GuardrailMiddleware
from guardrail.adapters.langchain import wrap_tools as lc_wrap_tools
from guardrail.adapters.openai_agents import wrap_tools as oa_wrap_tools
from guardrail.errors import PolicyError
from guardrail.policy import make_policy

SECRET = "INJECTED-OBJECT-SENTINEL"


class Inbox:
    """A live object a tool needs: not JSON, and it changes between runs."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.sent: list[str] = []
        self.token = SECRET  # must never reach the store

    def __repr__(self) -> str:
        return f"Inbox({self.owner!r}, {self.token})"


def dump(url: str) -> str:
    """Every row of the SQLite store as text (the WAL included)."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


def test_an_annotated_parameter_reaches_the_tool_and_its_undo_but_not_the_store(
    sqlite_url: str,
) -> None:
    guard = Guard(store=sqlite_url)
    undone: list[tuple[str, Inbox]] = []

    def unsend(args: dict[str, Any], inbox: Inbox) -> None:
        undone.append((args["to"], inbox))
        inbox.sent.remove(args["to"])

    @guard.tool(effect="reversible", undo=unsend)
    def send(to: str, inbox: Annotated[Inbox, Injected]) -> str:
        inbox.sent.append(to)
        return f"sent to {to}"

    @guard.tool(effect="irreversible")
    def fail(inbox: Annotated[Inbox, Injected]) -> None:
        raise RuntimeError("carrier down")

    inbox = Inbox("ada")
    with pytest.raises(RunHalted), guard.run(agent="mail") as run:
        assert send("bob@example.com", inbox) == "sent to bob@example.com"
        assert send(to="eve@example.com", inbox=inbox) == "sent to eve@example.com"
        fail(inbox=inbox)

    assert inbox.sent == []
    assert [to for to, _ in undone] == ["eve@example.com", "bob@example.com"]
    assert all(got is inbox for _, got in undone)  # the live object, not a copy
    log = guard.log(run.id)
    assert [a.args for a in log.actions] == [
        {"to": "bob@example.com"},
        {"to": "eve@example.com"},
        {},
    ]
    assert SECRET not in dump(sqlite_url) and "Inbox" not in dump(sqlite_url)
    guard.close()


def test_a_replay_with_a_changed_injected_object_does_not_run_an_irreversible_call_twice(
    sqlite_url: str,
) -> None:
    guard = Guard(store=sqlite_url)
    charged: list[int] = []
    world = {"ship_ok": False}

    @guard.tool(effect="irreversible", review=Review(kind="mark"))
    def charge(amount: int, bank: Annotated[dict[str, Any], Injected]) -> dict[str, Any]:
        charged.append(amount)
        bank["calls"] = bank.get("calls", 0) + 1  # the injected object changes as it is used
        return {"charge": f"ch_{len(charged)}"}

    @guard.tool(effect="read_only")
    def ship(order: str) -> str:
        if not world["ship_ok"]:
            raise RuntimeError("carrier down")
        return "shipped"

    def agent(bank: dict[str, Any]) -> Any:
        first = charge(12, bank=bank)
        ship("o1")
        return first

    with pytest.raises(RunHalted), guard.run(agent="shop") as run:
        agent({"session": "first", "calls": 0})
    guard.resume(run.id, by="ada")
    world["ship_ok"] = True
    with guard.run(run_id=run.id):
        replayed = agent({"session": "a new connection after the restart", "calls": 99})

    assert charged == [12]  # charged once, although the injected object differs completely
    assert replayed == {"charge": "ch_1"}
    assert guard.require_run(run.id).status == "completed"
    guard.close()


def test_a_policy_can_name_injected_parameters_for_calls_by_name(sqlite_url: str) -> None:
    guard = Guard(store=sqlite_url)
    seen: list[Any] = []

    def undo(args: dict[str, Any], db: Any) -> None:
        seen.append(db)

    guard.policy("insert", effect="reversible", undo=undo, injected=["db"])
    guard.policy("boom", effect="read_only")
    db = Inbox("db")

    def insert(row: str, db: Inbox) -> str:
        return row

    def boom() -> None:
        raise RuntimeError("no")

    with pytest.raises(RunHalted), guard.run() as run:
        assert run.call("insert", {"row": "r1", "db": db}, fn=insert) == "r1"
        run.call("boom", fn=boom)
    assert seen == [db]
    assert guard.log(run.id).actions[0].args == {"row": "r1"}
    guard.close()


def test_an_injected_name_that_hooks_could_not_ask_for_is_refused() -> None:
    with pytest.raises(PolicyError, match="injected = 'result'"):
        make_policy("t", effect="read_only", injected=["result"])


def _halted_run(guard: Guard, inbox: Inbox) -> str:
    def unsend(args: dict[str, Any], inbox: Inbox) -> None:
        inbox.sent.remove(args["to"])

    guard.policy("send", effect="reversible", undo=unsend, injected=["inbox"])
    guard.policy("wait", effect="read_only")

    def send(to: str, inbox: Inbox) -> str:
        inbox.sent.append(to)
        return "ok"

    with guard.run(agent="mail", on_failure="hold") as run:
        run.call("send", {"to": "bob@example.com", "inbox": inbox}, fn=send)
        with pytest.raises(RunHalted):
            run.call("wait", fn=lambda: (_ for _ in ()).throw(RuntimeError("later")))
    return run.id


def test_an_abort_elsewhere_without_the_injected_value_lists_the_undo_for_a_person(
    sqlite_url: str,
) -> None:
    inbox = Inbox("ada")
    run_id = _halted_run(Guard(store=sqlite_url), inbox)
    elsewhere = Guard(store=sqlite_url)  # another process: the CLI, the console
    elsewhere.policy("send", effect="reversible", undo=lambda args, inbox: None, injected=["inbox"])
    elsewhere.abort(run_id, by="ada")

    assert inbox.sent == ["bob@example.com"]  # nothing could undo it here
    items = elsewhere.store.review_items(run_id=run_id, status="open")
    failed = [i for i in items if i.reason == "compensation_failed"]
    assert len(failed) == 1
    assert "`inbox`" in (failed[0].instructions or "")
    assert "Guard(context=...)" in (failed[0].instructions or "")
    comps = elsewhere.store.compensations(run_id)
    assert [c.attempts for c in comps] == [1]  # not retried: retrying cannot help
    elsewhere.close()


def test_an_abort_elsewhere_gets_injected_values_from_the_context_factory(
    sqlite_url: str,
) -> None:
    inbox = Inbox("ada")
    run_id = _halted_run(Guard(store=sqlite_url), inbox)
    asked: list[tuple[str, int]] = []

    def context(action: Any) -> dict[str, Any]:
        asked.append((action.tool, action.seq))
        return {"inbox": inbox}

    elsewhere = Guard(store=sqlite_url, context=context)

    def unsend(args: dict[str, Any], inbox: Inbox) -> None:
        inbox.sent.remove(args["to"])

    elsewhere.policy("send", effect="reversible", undo=unsend, injected=["inbox"])
    elsewhere.abort(run_id, by="ada")
    assert inbox.sent == []
    assert asked == [("send", 1)]
    assert elsewhere.require_run(run_id).status == "aborted"
    elsewhere.close()


def test_an_undo_tool_gets_its_injected_parameters_from_the_context(sqlite_url: str) -> None:
    inbox = Inbox("ada")
    guard = Guard(store=sqlite_url, context=lambda action: {"inbox": inbox})

    @guard.tool(effect="read_only")
    def recall(to: str, inbox: Annotated[Inbox, Injected]) -> None:
        inbox.sent.remove(to)

    guard.policy(
        "send",
        effect="reversible",
        undo=UndoTool(tool="recall", args={"to": "args.to"}),
        injected=["inbox"],
    )
    guard.policy("wait", effect="read_only")

    def send(to: str, inbox: Inbox) -> str:
        inbox.sent.append(to)
        return "ok"

    with guard.run(on_failure="hold") as run:
        run.call("send", {"to": "bob", "inbox": inbox}, fn=send)
        with pytest.raises(RunHalted):
            run.call("wait", fn=lambda: (_ for _ in ()).throw(RuntimeError("later")))
    guard.live.drop(run.id)  # as in another process: only the context factory has it
    guard.abort(run.id, by="ada")
    assert inbox.sent == []
    guard.close()


def test_snapshot_and_probe_hooks_ask_for_injected_values_by_name(sqlite_url: str) -> None:
    guard = Guard(store=sqlite_url)
    files: dict[str, str] = {"a.txt": "old"}

    def before(args: dict[str, Any], fs: dict[str, str]) -> dict[str, str]:
        return {"previous": fs[args["path"]]}

    def restore(args: dict[str, Any], snapshot: dict[str, str], fs: dict[str, str]) -> None:
        fs[args["path"]] = snapshot["previous"]

    @guard.tool(effect="reversible", undo=restore, snapshot=before)
    def write(path: str, text: str, fs: Annotated[dict[str, str], Injected]) -> None:
        fs[path] = text

    @guard.tool(effect="read_only")
    def fail() -> None:
        raise RuntimeError("no")

    with pytest.raises(RunHalted), guard.run():
        write("a.txt", "new", fs=files)
        assert files["a.txt"] == "new"
        fail()
    assert files == {"a.txt": "old"}
    guard.close()


def test_async_tools_take_injected_values_too(sqlite_url: str) -> None:
    guard = Guard(store=sqlite_url)

    @guard.tool(effect="read_only")
    async def read(key: str, inbox: Annotated[Inbox, Injected]) -> str:
        return f"{inbox.owner}:{key}"

    async def main() -> str:
        async with guard.run() as run:
            value = await read("k", Inbox("ada"))
        assert guard.log(run.id).actions[0].args == {"key": "k"}
        return value  # type: ignore[no-any-return]

    assert asyncio.run(main()) == "ada:k"
    guard.close()


# -- LangChain ---------------------------------------------------------------------------------


# LangChain's agent state schema warns when serialising a non-None context; harmless here
@pytest.mark.filterwarnings("ignore::UserWarning:pydantic")
def test_langchain_injected_tool_arg_and_tool_runtime_under_wrap_tools_and_the_middleware(
    sqlite_url: str, tmp_path: Path
) -> None:
    guard = Guard(store=sqlite_url)
    inbox = Inbox("ada")
    runtimes: list[Any] = []

    @tool
    def add_row(value: str, conn: Annotated[Inbox, InjectedToolArg]) -> str:
        """Add a row."""
        conn.sent.append(value)
        return f"added {value}"

    @tool
    def note(text: str, runtime: ToolRuntime) -> str:
        """Note something."""
        runtimes.append(runtime)
        return f"noted {text} for {runtime.context!r}"

    def drop_row(args: dict[str, Any], conn: Inbox) -> None:
        conn.sent.remove(args["value"])

    guard.policy("add_row", effect="reversible", undo=drop_row, injected=["conn"])
    guard.policy("note", effect="read_only")
    add, wrapped_note = lc_wrap_tools(guard, [add_row, note])

    # wrap_tools: the injected connection reaches the tool, and the undo, not the store
    with pytest.raises(RunHalted), guard.run(agent="rows") as run:
        assert add.invoke({"value": "x", "conn": inbox}) == "added x"
        guard.policy("explode", effect="read_only")
        run.call("explode", fn=lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert inbox.sent == []
    assert guard.log(run.id).actions[0].args == {"value": "x"}

    # ToolRuntime through create_agent, both with wrapped tools and with the middleware
    def model() -> LCScriptedModel:
        return LCScriptedModel(
            messages=iter(
                [
                    AIMessage(
                        content="",
                        tool_calls=[{"name": "note", "args": {"text": "hi"}, "id": "c1"}],
                    ),
                    AIMessage(content="done"),
                ]
            )
        )

    with guard.run(agent="notes") as wrapped_run:
        create_agent(model(), [wrapped_note], context_schema=str).invoke(
            {"messages": [("user", "go")]}, context="ctx-1"
        )
    agent = create_agent(
        model(),
        [note],
        middleware=[GuardrailMiddleware(guard)],
        checkpointer=InMemorySaver(),
        context_schema=str,
    )
    out = agent.invoke(
        {"messages": [("user", "go")]}, {"configurable": {"thread_id": "th-1"}}, context="ctx-2"
    )
    assert out["messages"][-2].content == "noted hi for 'ctx-2'"
    assert len(runtimes) == 2 and runtimes[1].context == "ctx-2"
    for run_id in (wrapped_run.id, "th-1"):
        actions = guard.log(run_id).actions
        assert [(a.tool, a.args, a.call_id) for a in actions] == [("note", {"text": "hi"}, "c1")]
    assert SECRET not in dump(sqlite_url) and "ToolRuntime" not in dump(sqlite_url)
    guard.close()


# -- OpenAI Agents SDK -------------------------------------------------------------------------


def test_an_openai_agents_tool_that_reads_its_context(sqlite_url: str) -> None:
    guard = Guard(store=sqlite_url)
    undone: list[str] = []

    @function_tool
    def send(ctx: RunContextWrapper[Inbox], to: str) -> str:
        """Send a message."""
        ctx.context.sent.append(to)
        return f"sent by {ctx.context.owner}"

    @function_tool
    def fail() -> str:
        """Always fails."""
        raise RuntimeError("carrier down")

    def unsend(args: dict[str, Any], context: Inbox) -> None:
        context.sent.remove(args["to"])
        undone.append(args["to"])

    guard.policy("send", effect="reversible", undo=unsend)
    guard.policy("fail", effect="read_only")
    model = OAScriptedModel(
        [
            [function_call("send", {"to": "bob"}, call_id="c1")],
            [function_call("fail", {}, call_id="c2")],
            [assistant_message("done")],
        ]
    )
    agent: Agent[Inbox] = Agent(name="mail", model=model, tools=oa_wrap_tools(guard, [send, fail]))
    inbox = Inbox("ada")
    with pytest.raises(RunHalted), guard.run(agent="mail") as run:
        Runner.run_sync(agent, "go", context=inbox, run_config=RunConfig(tracing_disabled=True))
    assert undone == ["bob"] and inbox.sent == []
    assert [a.args for a in guard.log(run.id).actions] == [{"to": "bob"}, {}]
    assert SECRET not in dump(sqlite_url)
    guard.close()


def test_a_failing_context_factory_leaves_no_secret_in_the_log(sqlite_url: str) -> None:
    inbox = Inbox("ada")
    run_id = _halted_run(Guard(store=sqlite_url), inbox)

    def context(action: Any) -> dict[str, Any]:
        raise ConnectionError("cannot reach postgresql://app:hunter2pass@db/prod")

    elsewhere = Guard(store=sqlite_url, context=context)
    elsewhere.policy("send", effect="reversible", undo=lambda args, inbox: None, injected=["inbox"])
    elsewhere.abort(run_id, by="ada")
    [item] = [
        i for i in elsewhere.store.review_items(run_id=run_id) if i.reason == "compensation_failed"
    ]
    assert "context factory failed" in (item.instructions or "")
    assert "hunter2pass" not in dump(sqlite_url)
    elsewhere.close()
