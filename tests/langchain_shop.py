"""A create_agent shop under GuardrailMiddleware, used by tests/test_langchain.py in-process and
as a child process (to prove a paused thread survives a process restart).

    python tests/langchain_shop.py start|resume STORE_URL CHECKPOINT_DB WORLD_JSON
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from guardrail import Guard
from guardrail.adapters.langchain import GuardrailMiddleware

THREAD = {"configurable": {"thread_id": "thread-1"}}


class ScriptedModel(GenericFakeChatModel):
    """A chat model that answers from a script and accepts tools (no network)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def script() -> list[AIMessage]:
    return [
        AIMessage(
            content="",
            tool_calls=[{"name": "create_order", "args": {"item": "book"}, "id": "call-1"}],
        ),
        AIMessage(  # two tool calls in one model turn: they run in parallel
            content="",
            tool_calls=[
                {"name": "send_email", "args": {"to": "ada@example.com"}, "id": "call-2"},
                {"name": "ship", "args": {"order_id": "o-book"}, "id": "call-3"},
            ],
        ),
        AIMessage(content="all done"),
    ]


class World:
    """Side effects, kept in a JSON file so they survive the process.

    Parallel tool calls read and change it from several threads: a save replaces the file in
    one step (a reader never sees it half written) and a change holds a lock, so that a tool
    fails only when the test means it to (an unexpected error would leave its call in doubt).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        if not path.exists():
            self.save({"orders": [], "cancelled": [], "emails": 0, "shipped": 0, "ship_ok": False})

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())  # type: ignore[no-any-return]

    def save(self, data: dict[str, Any]) -> None:
        fresh = self.path.with_name(f"{self.path.name}.{threading.get_ident()}.tmp")
        fresh.write_text(json.dumps(data))
        os.replace(fresh, self.path)

    def change(self, key: str, fn: Any) -> Any:
        with self.lock:
            data = self.load()
            data[key] = fn(data[key])
            self.save(data)
            return data


class CarrierDown(ConnectionError):
    """The carrier refused the shipment: nothing was shipped (declared ``not_done``)."""


def build(store: str, checkpoints: str, world: World, *, is_async: bool = False) -> Any:
    guard = Guard(store=store)

    def cancel_order(result: dict[str, Any]) -> None:
        world.change("cancelled", lambda c: [*c, result["content"]])

    guard.policy("create_order", effect="reversible", undo=cancel_order)
    guard.policy("send_email", effect="irreversible", review={"kind": "correct"})
    guard.policy("ship", effect="reversible", undo=lambda: None, not_done=[CarrierDown])

    def create(item: str) -> str:
        world.change("orders", lambda o: [*o, f"o-{item}"])
        return f"o-{item}"

    sent = threading.Event()

    def email(to: str) -> str:
        world.change("emails", lambda n: n + 1)
        sent.set()
        return "sent"

    def ship_it(order_id: str) -> str:
        if not is_async and world.load()["emails"] == 0:
            # The scenario: the carrier answers after the email went out. Without this, on a
            # loaded machine ship may fail before its sibling started, and then the sibling is
            # refused (the run halts) and runs only after review. (Async tools run one after
            # the other here: their guarded calls do not yield to each other.)
            sent.wait(timeout=60)
        if not world.load()["ship_ok"]:
            raise CarrierDown("the carrier is down")
        world.change("shipped", lambda n: n + 1)
        return "shipped"

    if is_async:

        @tool
        async def create_order(item: str) -> str:
            """Create an order for an item."""
            return create(item)

        @tool
        async def send_email(to: str) -> str:
            """Send the confirmation email."""
            return email(to)

        @tool
        async def ship(order_id: str) -> str:
            """Ship an order."""
            return ship_it(order_id)

    else:

        @tool
        def create_order(item: str) -> str:
            """Create an order for an item."""
            return create(item)

        @tool
        def send_email(to: str) -> str:
            """Send the confirmation email."""
            return email(to)

        @tool
        def ship(order_id: str) -> str:
            """Ship an order."""
            return ship_it(order_id)

    # SqliteSaver is sync only; the async agent keeps its checkpoints in memory
    saver: Any = (
        InMemorySaver()
        if is_async
        else SqliteSaver(sqlite3.connect(checkpoints, check_same_thread=False))
    )
    agent = create_agent(
        ScriptedModel(messages=iter(script())),
        [create_order, send_email, ship],
        middleware=[GuardrailMiddleware(guard, agent="shop")],
        checkpointer=saver,
    )
    return guard, agent


def main() -> None:
    phase, store, checkpoints, world_path = sys.argv[1:5]
    world = World(Path(world_path))
    guard, agent = build(store, checkpoints, world)
    if phase == "start":
        out = agent.invoke({"messages": [{"role": "user", "content": "buy a book"}]}, THREAD)
        print(json.dumps({"interrupted": bool(out.get("__interrupt__"))}))
    else:
        out = agent.invoke(Command(resume="go on"), THREAD)
        print(json.dumps({"answer": out["messages"][-1].content}))
    guard.close()


if __name__ == "__main__":
    main()
