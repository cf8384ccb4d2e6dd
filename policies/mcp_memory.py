"""Policy pack ``mcp-memory``: the MCP reference memory server (``@modelcontextprotocol/
server-memory``), a knowledge graph of entities, relations and observations, with exact undos.

Every tool of the server, declared from what it does:

- ``read_graph``, ``search_nodes`` and ``open_nodes`` read; they are read-only.
- ``create_entities``, ``create_relations`` and ``add_observations`` add only what is not there
  yet, and are undone with the server's own delete tools (``delete_entities``,
  ``delete_relations``, ``delete_observations``), given exactly what the call added: for
  relations the server's answer lists them; for entities and observations the snapshot works
  out, from the graph before the call, which ones the call adds (the server skips entities and
  observations that already exist, and those must stay).
- ``delete_entities`` (with every relation that names them), ``delete_observations`` and
  ``delete_relations`` are undone from a snapshot of what they delete: the undo puts each entity,
  relation and observation back at its place in the graph file, as the server writes it, so the
  graph is the same as before, order included. It only adds: something that is back already is
  left alone, and an entity that someone created again under the same name since, with other
  contents, makes the undo refuse and leave it to a person.

When a call raises (the server's error answer, a lost connection, a crash of the proxy), the
pack's probe looks in the graph for what the call adds and removes: none of it, the call did not
happen; all of it, it did (and its undo applies); anything else is left to a person.

The snapshots read the graph file, the one the server keeps: ``MEMORY_FILE_PATH`` in the
environment (the proxy passes its environment on to the server, so one setting serves both),
or the ``memory_file`` option. Without an absolute path every change to the graph is refused
before it runs (``CallRefused``): the server's default file lies inside its own install folder.

``create_entities`` is refused when relations already name an entity it would create: its undo,
``delete_entities``, would delete those relations too. Create entities before their relations.

The undos of the create tools call the server, so they run where its tools are (the proxy, or
code that registered them with the guard); the undos of the delete tools write the graph file,
so they run anywhere that sees it::

    MEMORY_FILE_PATH=/srv/agent/memory.jsonl \\
        guardrail mcp-proxy --pack mcp-memory -- npx -y @modelcontextprotocol/server-memory
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.errors import CallRefused
from guardrail.policy import Policy, Retry, Review, UndoTool

READ_ONLY = ("read_graph", "search_nodes", "open_nodes")


class GraphChanged(RuntimeError):
    """Something the undo would put back is in the graph again, with other contents."""


@dataclass
class Graph:
    """The memory server's graph file: one JSON object per line, entities first, then relations.

    Lines are kept as the server wrote them, so lines put back are byte-identical.
    """

    path: Path
    entities: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Graph:
        graph = cls(path)
        try:
            text = path.read_bytes().decode("utf-8")  # no newline translation
        except FileNotFoundError:
            return graph
        for line in text.split("\n"):
            if not line.strip():
                continue
            kind = json.loads(line).get("type")
            if kind == "entity":
                graph.entities.append(line)
            elif kind == "relation":
                graph.relations.append(line)
        return graph

    def entity(self, name: str) -> tuple[int, dict[str, Any]] | None:
        for i, line in enumerate(self.entities):
            item = json.loads(line)
            if item.get("name") == name:
                return i, item
        return None

    def names(self) -> set[str]:
        return {json.loads(line).get("name") for line in self.entities}

    def save(self) -> None:
        """Write the graph as the server does: the lines joined by newlines, into a temporary
        file beside it that is then renamed over it (readers see the old or the new graph)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{secrets.token_hex(16)}.tmp")
        try:
            tmp.write_bytes("\n".join(self.entities + self.relations).encode("utf-8"))
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def entity_line(item: Mapping[str, Any]) -> str:
    """An entity as the server writes it (``JSON.stringify`` of these keys, in this order)."""
    return json.dumps(
        {
            "type": "entity",
            "name": item["name"],
            "entityType": item["entityType"],
            "observations": list(item["observations"]),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def relation_key(item: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return item.get("from"), item.get("to"), item.get("relationType")


def graph_file(option: str | os.PathLike[str] | None) -> Path:
    value = os.fspath(option) if option is not None else os.environ.get("MEMORY_FILE_PATH")
    if not value:
        raise CallRefused(
            "the memory graph's file is unknown, so this change could not be undone: set "
            "MEMORY_FILE_PATH to an absolute path for the server and the guard (the proxy passes "
            "its environment on to the server), or pass the pack option memory_file=PATH",
            field="memory_file",
        )
    if not os.path.isabs(value):
        raise CallRefused(
            f"the memory graph's file {value!r} is a relative path, which the server resolves "
            "against its own install folder; set MEMORY_FILE_PATH (or memory_file) to an "
            "absolute path",
            field="memory_file",
        )
    return Path(value)


# -- the create tools: what the call will add, for the server's delete tools --------------------


def new_entities(graph: Graph, args: Mapping[str, Any]) -> dict[str, Any]:
    existing = graph.names()
    new = list(dict.fromkeys(e["name"] for e in args["entities"] if e["name"] not in existing))
    naming = [
        line
        for line in graph.relations
        if {json.loads(line).get("from"), json.loads(line).get("to")} & set(new)
    ]
    if naming:
        shown = "; ".join(_relation_text(json.loads(line)) for line in naming[:5])
        raise CallRefused(
            f"relations already name {', '.join(map(repr, new))} ({shown}): the undo of "
            "create_entities (delete_entities) would delete them too. Create entities before the "
            "relations that name them, or delete those relations first",
            tool="create_entities",
            field="args.entities",
        )
    return {
        "file": str(graph.path),
        "entityNames": new,
        "adds": [["entity", name] for name in new],
        "removes": [],
    }


def new_relations(graph: Graph, args: Mapping[str, Any]) -> dict[str, Any]:
    present = {relation_key(json.loads(line)) for line in graph.relations}
    new = [dict(r) for r in args["relations"] if relation_key(r) not in present]
    return {
        "file": str(graph.path),
        "relations": new,
        "adds": [["relation", *relation_key(r)] for r in new],
        "removes": [],
    }


def new_observations(graph: Graph, args: Mapping[str, Any]) -> dict[str, Any]:
    held: dict[str, list[str]] = {}
    for line in graph.entities:
        item = json.loads(line)
        held.setdefault(item.get("name"), list(item.get("observations") or []))
    deletions = []
    for o in args["observations"]:
        observations = held.get(o["entityName"])
        if observations is None:  # the server refuses the whole call: nothing is added
            return {"file": str(graph.path), "deletions": [], "adds": [], "removes": []}
        added = [c for c in o["contents"] if c not in observations]
        observations.extend(added)
        deletions.append({"entityName": o["entityName"], "observations": added})
    adds = [["observation", d["entityName"], o] for d in deletions for o in d["observations"]]
    return {"file": str(graph.path), "deletions": deletions, "adds": adds, "removes": []}


def _relation_text(item: Mapping[str, Any]) -> str:
    return f"{item.get('from')} {item.get('relationType')} {item.get('to')}"


# -- the delete tools: what the call will delete, and putting it back --------------------------


def deleted_entities(graph: Graph, args: Mapping[str, Any]) -> dict[str, Any]:
    names = set(args["entityNames"])
    return _deleting(
        graph,
        entities=[
            [i, line] for i, line in enumerate(graph.entities) if json.loads(line)["name"] in names
        ],
        relations=[
            [i, line]
            for i, line in enumerate(graph.relations)
            if {json.loads(line).get("from"), json.loads(line).get("to")} & names
        ],
    )


def deleted_relations(graph: Graph, args: Mapping[str, Any]) -> dict[str, Any]:
    gone = {relation_key(r) for r in args["relations"]}
    return _deleting(
        graph,
        relations=[
            [i, line]
            for i, line in enumerate(graph.relations)
            if relation_key(json.loads(line)) in gone
        ],
    )


def deleted_observations(graph: Graph, args: Mapping[str, Any]) -> dict[str, Any]:
    """Per entity, each observation the call deletes with its position before the call."""
    removed: dict[str, list[list[Any]]] = {}
    for d in args["deletions"]:
        found = graph.entity(d["entityName"])
        if found is None:
            continue  # the server skips an entity that does not exist
        observations = found[1].get("observations") or []
        gone = set(d["observations"])
        kept = removed.setdefault(d["entityName"], [])
        kept.extend([i, o] for i, o in enumerate(observations) if o in gone and [i, o] not in kept)
    return _deleting(graph, observations={n: sorted(r) for n, r in removed.items()})


def _deleting(
    graph: Graph,
    entities: list[list[Any]] | None = None,
    relations: list[list[Any]] | None = None,
    observations: dict[str, list[list[Any]]] | None = None,
) -> dict[str, Any]:
    """A delete tool's snapshot: what it deletes, with the places, and as facts for the probe."""
    entities, relations, observations = entities or [], relations or [], observations or {}
    removes = [["entity", json.loads(line)["name"]] for _, line in entities]
    removes += [["relation", *relation_key(json.loads(line))] for _, line in relations]
    removes += [["observation", n, o] for n, found in observations.items() for _, o in found]
    return {
        "file": str(graph.path),
        "entities": entities,
        "relations": relations,
        "observations": observations,
        "adds": [],
        "removes": removes,
    }


def put_back(snapshot: dict[str, Any]) -> None:
    """Undo of the delete tools: insert what the call deleted at its old places.

    A deletion removes every entity, relation or observation that matches, so one that is in the
    graph again was put back already (a repeated undo) or by someone else since: it is left as
    it is. An entity back under the same name with other contents makes the undo refuse,
    changing nothing.
    """
    graph = Graph.load(Path(snapshot["file"]))
    entities = [(i, line, json.loads(line)) for i, line in snapshot.get("entities", [])]
    back = {item["name"] for _, _, item in entities if graph.entity(item["name"]) is not None}
    current = [json.loads(line) for line in graph.entities]
    for _, line, item in entities:
        if item["name"] in back and item not in current:
            raise GraphChanged(
                f"{graph.path}: entity {item['name']!r} was created again since it was deleted, "
                f"with other contents; nothing was put back. Merge the deleted one by hand: {line}"
            )
    for i, line, item in entities:
        if item["name"] not in back:
            graph.entities.insert(min(i, len(graph.entities)), line)
    present = {relation_key(json.loads(line)) for line in graph.relations}
    for i, line in snapshot.get("relations", []):
        if relation_key(json.loads(line)) not in present:
            graph.relations.insert(min(i, len(graph.relations)), line)
    for name, removed in snapshot.get("observations", {}).items():
        found = graph.entity(name)
        if found is None:
            raise GraphChanged(
                f"{graph.path}: entity {name!r} was deleted since, so its observations "
                f"{[o for _, o in removed]!r} were not put back; add them by hand if it returns"
            )
        at, item = found
        observations = list(item.get("observations") or [])
        absent = {o for _, o in removed if o not in observations}
        for i, o in removed:
            if o in absent:
                observations.insert(min(i, len(observations)), o)
        graph.entities[at] = entity_line({**item, "observations": observations})
    graph.save()


# -- the probe: did a call whose outcome is unknown take effect? --------------------------------


def holds(graph: Graph, fact: list[Any]) -> bool:
    kind, *what = fact
    if kind == "entity":
        return graph.entity(what[0]) is not None
    if kind == "relation":
        return tuple(what) in {relation_key(json.loads(line)) for line in graph.relations}
    found = graph.entity(what[0])
    return found is not None and what[1] in (found[1].get("observations") or [])


def probe(snapshot: dict[str, Any]) -> dict[str, Any] | bool | None:
    """Whether a call that raised (the server's error answer, a lost connection, a crash) took
    effect, from the graph: the snapshot lists what the call adds and removes. Nothing of it
    done: False; all of it: a result in the server's shape (its undo applies); else None, and a
    person decides."""
    graph = Graph.load(Path(snapshot["file"]))
    added = [holds(graph, fact) for fact in snapshot["adds"]]
    kept = [holds(graph, fact) for fact in snapshot["removes"]]
    if not any(added) and all(kept):
        return False  # also when the call had nothing to change
    if all(added) and not any(kept):
        return {
            "content": [{"type": "text", "text": "done (found by guardrail's probe)"}],
            "structuredContent": {"relations": snapshot.get("relations") or []},
        }
    return None


# -- the pack ----------------------------------------------------------------------------------

REVIEW = Review(
    kind="correct",
    instructions="Compare the knowledge graph (read_graph) with this call's arguments and put "
    "back or remove by hand what the reason names",
)


def mcp_memory(*, memory_file: str | os.PathLike[str] | None = None) -> list[Policy]:
    """Policies for every tool of the MCP reference memory server.

    ``memory_file``: the server's graph file, when ``MEMORY_FILE_PATH`` is not set here.

    Example::

        guard.load_policies("mcp-memory", memory_file="/srv/agent/memory.jsonl")
    """

    def reading(build: Callable[[Graph, Mapping[str, Any]], dict[str, Any]]) -> Any:
        def snapshot(args: dict[str, Any]) -> dict[str, Any]:
            return build(Graph.load(graph_file(memory_file)), args)

        snapshot.__name__ = snapshot.__qualname__ = f"snapshot_{build.__name__}"
        return snapshot

    policies = [Policy(name=name, effect="read_only") for name in READ_ONLY]
    common: dict[str, Any] = {
        "effect": "reversible",
        "undo_idempotent": True,
        "review": REVIEW,
        "probe": probe,
    }
    policies += [
        Policy(
            name="create_entities",
            snapshot=reading(new_entities),
            undo=UndoTool(tool="delete_entities", args={"entityNames": "snapshot.entityNames"}),
            **common,
        ),
        Policy(
            name="create_relations",
            snapshot=reading(new_relations),
            undo=UndoTool(
                tool="delete_relations", args={"relations": "result.structuredContent.relations"}
            ),
            **common,
        ),
        Policy(
            name="add_observations",
            snapshot=reading(new_observations),
            undo=UndoTool(tool="delete_observations", args={"deletions": "snapshot.deletions"}),
            **common,
        ),
    ]
    for name, build in (
        ("delete_entities", deleted_entities),
        ("delete_relations", deleted_relations),
        ("delete_observations", deleted_observations),
    ):
        policies.append(
            Policy(
                name=name,
                snapshot=reading(build),
                undo=put_back,
                undo_retry=Retry(attempts=3, on=(OSError,)),
                **common,
            )
        )
    return policies
