"""A LangChain agent (create_agent) writing files under guardrail, with a SQLite checkpointer.

    python examples/langchain_agent.py

The model is scripted (no network). It writes a report, renames a draft and publishes. Publishing
fails: GuardrailMiddleware turns the halt into a LangGraph interrupt and the thread pauses, held
for review. Thread 1: a person resumes the run and the thread continues from its checkpoint (the
files already written are not written again). Thread 2: a person aborts instead, and the
file-management pack puts every byte back.
"""

from __future__ import annotations

import sqlite3
import tempfile
import warnings
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from guardrail import Guard, RunHalted
from guardrail.adapters.langchain import GuardrailMiddleware
from guardrail.testing import tree_hash

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # langchain-community's sunset notice
    from langchain_community.agent_toolkits import FileManagementToolkit


class HostUnavailable(ConnectionError):
    """The web host answered 503: it refused the upload, so nothing was published."""


class ScriptedModel(GenericFakeChatModel):
    """Answers from a script; accepts tools like a real chat model would."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


def script() -> list[AIMessage]:
    def call(name: str, args: dict[str, Any], n: int) -> AIMessage:
        return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"c{n}"}])

    return [
        call("write_file", {"file_path": "report.md", "text": "# Q3\nrevenue up\n"}, 1),
        call("move_file", {"source_path": "draft.md", "destination_path": "archive/draft.md"}, 2),
        call("publish", {"path": "report.md"}, 3),
        AIMessage(content="Report written and published."),
    ]


def main() -> None:
    base = Path(tempfile.mkdtemp())
    store = f"sqlite:///{base / 'guardrail.db'}"
    checkpoints = sqlite3.connect(base / "checkpoints.db", check_same_thread=False)
    publisher = {"up": False}

    guard = Guard(store=store)
    guard.load_policies("langchain-file-management", root_dir=base / "site")
    # A 503 proves nothing was published (not_done). Any other error (a timeout after the
    # upload left) would leave the outcome unknown: a person would say whether it happened.
    guard.policy(
        "publish",
        effect="irreversible",
        review={"kind": "handoff", "owner": "web"},
        not_done=[HostUnavailable],
    )

    @tool
    def publish(path: str) -> str:
        """Publish a file to the web site."""
        if not publisher["up"]:
            raise HostUnavailable("the web host answered 503 Service Unavailable")
        return f"published {path}"

    def agent() -> Any:
        files = FileManagementToolkit(root_dir=str(base / "site")).get_tools()
        return create_agent(
            ScriptedModel(messages=iter(script())),
            [*files, publish],
            middleware=[GuardrailMiddleware(guard, agent="publisher")],
            checkpointer=SqliteSaver(checkpoints),
        )

    for thread, decision in (("thread-1", "resume"), ("thread-2", "abort")):
        site = base / "site"
        site.mkdir(exist_ok=True)
        (site / "draft.md").write_text("draft\n")
        (site / "report.md").unlink(missing_ok=True)
        before = tree_hash(site)
        publisher["up"] = False
        config = {"configurable": {"thread_id": thread}}
        print(f"\n== {thread}: the agent runs")
        out = agent().invoke({"messages": [{"role": "user", "content": "publish Q3"}]}, config)
        paused = out["__interrupt__"][0].value["guardrail"]
        print(f"paused: run {paused['run_id']} is {paused['status']}: {paused['reason']}")
        for step in guard.plan_undo(thread):
            if step.do != "nothing":
                print(f"  an abort would {step.do} action {step.seq} ({step.tool}): {step.detail}")
        if decision == "resume":
            publisher["up"] = True
            guard.resume(thread, by="ann", note="web host is back")
            out = agent().invoke(Command(resume="go on"), config)
            print(f"ann resumed; the agent says: {out['messages'][-1].content}")
        else:
            guard.abort(thread, by="ann", reason="wrong quarter")
            try:
                agent().invoke(Command(resume="go on"), config)
            except RunHalted as halt:
                print(f"ann aborted; the thread stops: {halt}")
            print(f"files restored byte for byte: {tree_hash(site) == before}")
        for a in guard.log(thread).actions:
            print(f"  {a.seq}  {a.tool:<11} {a.state:<12} {a.external_ids}")
    guard.close()


if __name__ == "__main__":
    main()
