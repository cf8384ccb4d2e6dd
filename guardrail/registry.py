"""The guard's policies and tools: declared in code, loaded from files and packs, seeded by
tool hints; and the callables registered by name (guarded tools, undo tools of policy files).

A tool's effective policy is the loaded one (file or pack) over the one declared in code over
one seeded by hints. `Registry` is what the core looks policies up in (`guardrail.core.Policies`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from guardrail import policy_file, policy_source, policy_trust
from guardrail.errors import PolicyError, UnknownTool
from guardrail.fingerprint import fingerprint
from guardrail.policy import Policy, make_policy

log = logging.getLogger("guardrail")
PACK_GROUP = "guardrail.policy_packs"


class Registry:
    """Policies by tool name and tools by name; ``strict`` refuses a call of a tool with no
    policy; ``allow`` are the module prefixes policy files may name functions under."""

    def __init__(self, *, strict: bool, allow: tuple[str, ...]) -> None:
        self.strict = strict
        self.allow = allow
        self.declared: dict[str, Policy] = {}  # declared in code
        self.loaded: dict[str, Policy] = {}  # from files and packs: these win
        self.hinted: dict[str, Policy] = {}  # from tool hints: defaults only
        self.tools: dict[str, Callable[..., Any]] = {}

    def add(self, policy: Policy) -> Policy:
        self.declared[policy.name] = policy
        return policy

    def find_policy(self, name: str) -> Policy | None:
        return self.loaded.get(name) or self.declared.get(name) or self.hinted.get(name)

    @property
    def policies(self) -> dict[str, Policy]:
        return {**self.hinted, **self.declared, **self.loaded}

    @property
    def policy_fingerprint(self) -> str:
        return fingerprint({**self.declared, **self.loaded}.values())

    def load(
        self, source: str | Path | Mapping[str, Any], allow: Iterable[str], **options: Any
    ) -> list[Policy]:
        """Load policies from a file, a parsed mapping or a pack (see `Guard.load_policies`)."""
        trusted = (*self.allow, *policy_trust.check_allow(allow))
        registered = list(self.tools.values())
        if isinstance(source, Mapping):
            policies = policy_file.parse_mapping(source, allow=trusted, functions=registered)
        elif isinstance(source, Path) or Path(source).suffix.lower() in policy_source.SUFFIXES:
            if options:
                raise PolicyError(
                    f"{source}: options ({', '.join(options)}) are for policy packs, not files",
                    file=str(source),
                )
            policies = policy_file.load(source, allow=trusted, functions=registered)
        else:
            if allow:
                raise PolicyError(
                    f"{source}: allow= is for policy files; a policy pack is code, and needs none",
                    field="allow",
                )
            policies = load_pack(source, **options)
        for policy in policies:
            if policy.name in self.declared:
                log.info(
                    "policy for %s from %s replaces the one declared in code", policy.name, source
                )
            self.loaded[policy.name] = policy
        return policies

    def hint(self, policy: Policy) -> Policy:
        self.hinted[policy.name] = policy
        return policy

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        self.tools[name] = fn

    def tool_function(self, name: str) -> Callable[..., Any] | None:
        """The raw (unguarded) callable registered for a tool name."""
        fn = self.tools.get(name)
        return getattr(fn, "__guardrail_raw__", fn) if fn is not None else None

    def resolve_tool(
        self, tool: str, fn: Callable[..., Any] | None, *, run_id: str
    ) -> tuple[Policy, Callable[..., Any]]:
        """The call's policy and the raw callable to run (``fn``, else the registered one)."""
        policy = self.find_policy(tool)
        if policy is None:
            if self.strict:
                raise UnknownTool(
                    f"run {run_id}: tool {tool!r} has no policy and the guard is strict; declare "
                    f"guard.policy({tool!r}, effect=...) or use @guard.tool",
                    run_id=run_id,
                    tool=tool,
                    field="policy",
                )
            policy = self.add(make_policy(tool, effect="irreversible"))
        target = fn if fn is not None else self.tools.get(tool)
        if target is None:
            raise UnknownTool(
                f"run {run_id}: no callable is registered for tool {tool!r}; pass fn=...",
                run_id=run_id,
                tool=tool,
            )
        return policy, getattr(target, "__guardrail_raw__", target)


def load_pack(name: str, **options: Any) -> list[Policy]:
    """A policy pack by name, found through the ``guardrail.policy_packs`` entry points (ours in
    ``guardrail.policies``; other distributions can add their own)."""
    packs = {ep.name: ep for ep in entry_points(group=PACK_GROUP)}
    if name not in packs:
        known = ", ".join(sorted(packs)) or "none installed"
        raise PolicyError(
            f"{name!r} is neither a policy file (.yaml, .yml, .toml) nor a known policy pack "
            f"({known})",
            field="source",
        )
    build = packs[name].load()
    try:
        policies = build(**options)
    except TypeError as exc:
        raise PolicyError(f"policy pack {name!r}: {exc}", field="options") from None
    return list(policies)
