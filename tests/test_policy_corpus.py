"""A corpus of malformed and hostile policy files (policy files are a trust boundary).

Every hostile file must be refused with a PolicyError (never another exception) whose one-line
message names the file and, where the format tells, the tool, the field and the line; and
``problems()`` must list at least one Problem for it. Valid controls (``on:`` keys, a BOM, TOML)
must load. Conditions that fail at run time fail closed: the run waits for a person.

A policy file is data, not code: a dotted path naming a callable outside the modules the test
allows (``allow``) is hostile too, whatever it names.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from guardrail import Guard, RunHalted, policy_check, policy_file, policy_source
from guardrail.cli import app
from guardrail.conditions import Condition, ConditionError
from guardrail.errors import PolicyError
from guardrail.policy_file import Problem

MISSING = object()  # no file at all
DIRECTORY = object()  # a directory with a policy file's name

IRR = "    effect: irreversible\n    review: {kind: mark}\n"  # a valid tool body to extend


def tool(extra: str, name: str = "send") -> str:
    """A YAML file with one irreversible tool ``name`` plus ``extra`` (indented 4) lines."""
    return f"tools:\n  {name}:\n{IRR}{textwrap.indent(textwrap.dedent(extra), '    ')}"


@dataclass(frozen=True)
class Expect:
    tool: str | None = None  # PolicyError.tool must equal this
    field: str | None = None  # PolicyError.field must equal this, and appear in the message
    line: int | None = None  # PolicyError.line must equal this
    words: tuple[str, ...] = ()  # substrings of the message
    codes: tuple[str, ...] = ()  # Problem codes problems() must include
    allow: tuple[str, ...] = ()  # module prefixes the loader is given (allow=, --allow)


def case(
    id: str,
    filename: str,
    content: Any,
    *,
    tool: str | None = None,
    field: str | None = None,
    line: int | None = None,
    words: tuple[str, ...] | str = (),
    codes: tuple[str, ...] | str = (),
    allow: tuple[str, ...] = (),
) -> Any:
    words = (words,) if isinstance(words, str) else words
    codes = (codes,) if isinstance(codes, str) else codes
    expect = Expect(tool=tool, field=field, line=line, words=words, codes=codes, allow=allow)
    return pytest.param(filename, content, expect, id=id)


HUGE = "tools:\n  a: {effect: read_only}\n" + "# padding past the size limit .......\n" * 30_000
LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "tools: {}\n"
)

HOSTILE = [
    # -- YAML syntax ------------------------------------------------------------------------
    case(
        "yaml-tab-indent",
        "p.yaml",
        "tools:\n\tsend:\n\t\teffect: irreversible\n",
        line=2,
        words=("not valid YAML", "tab"),
        codes="syntax",
    ),
    case(
        "yaml-unclosed-brace",
        "p.yaml",
        "tools:\n  send: {effect: irreversible\n",
        line=3,
        words="not valid YAML",
        codes="syntax",
    ),
    case(
        "yaml-unclosed-bracket",
        "p.yaml",
        tool("redact: [args.body\n"),
        words="not valid YAML",
        codes="syntax",
    ),
    case(
        "yaml-bad-indentation",
        "p.yaml",
        "tools:\n  send:\n    effect: irreversible\n   review: {kind: mark}\n",
        line=4,
        words="not valid YAML",
        codes="syntax",
    ),
    case(
        "yaml-unterminated-quote",
        "p.yml",
        "tools:\n  send:\n    effect: 'irreversible\n",
        words="not valid YAML",
        codes="syntax",
    ),
    case(
        "yaml-two-documents",
        "p.yaml",
        "tools: {}\n---\ntools: {}\n",
        line=2,
        words="another document",
        codes="syntax",
    ),
    case(
        "yaml-control-character",
        "p.yaml",
        "tools:\n  a: {effect: read_only}\n\x00\n",
        line=3,
        words="unacceptable character",
        codes="syntax",
    ),
    case(
        "yaml-python-tag",
        "p.yaml",
        "tools: !!python/object/apply:os.system ['echo owned']\n",
        line=1,
        words="python/object/apply",
        codes="syntax",
    ),
    case(
        "yaml-custom-tag",
        "p.yaml",
        "tools:\n  a: !custom {effect: read_only}\n",
        line=2,
        words="!custom",
        codes="syntax",
    ),
    case(
        "yaml-merge-key",
        "p.yaml",
        "tools:\n  a:\n    <<: {effect: read_only}\n",
        line=3,
        words="merge",
        codes="syntax",
    ),
    # -- top level ----------------------------------------------------------------------------
    case("empty-file", "p.yaml", "", words="empty", codes="invalid"),
    case("only-comments", "p.yaml", "# policies\n\n", words="empty", codes="invalid"),
    case("top-level-list", "p.yaml", "- send\n- cancel\n", line=1, words=("mapping", "a list")),
    case("top-level-scalar", "p.yaml", "hello\n", line=1, words=("mapping", "'hello'")),
    case("missing-tools", "p.yaml", "version: 1\n", field="tools", line=1, words="missing"),
    case("tools-is-list", "p.yaml", "tools:\n  - send\n", field="tools", line=1, words="a list"),
    case("tools-is-null", "p.yaml", "tools:\n", field="tools", line=1, words="mapping"),
    case("version-2", "p.yaml", "version: 2\ntools: {}\n", field="version", line=1, words="1"),
    case(
        "unknown-top-key",
        "p.yaml",
        "tools: {}\ncolour: red\n",
        field="colour",
        line=2,
        words="unknown key",
    ),
    # -- a tool's value -----------------------------------------------------------------------
    case("tool-is-null", "p.yaml", "tools:\n  a:\n", tool="a", line=2, words="mapping"),
    case(
        "tool-is-string",
        "p.yaml",
        "tools:\n  a: read_only\n",
        tool="a",
        line=2,
        words=("mapping", "'read_only'"),
    ),
    case(
        "effect-missing",
        "p.yaml",
        "tools:\n  a:\n    review: {kind: mark}\n",
        tool="a",
        field="effect",
        line=2,
        words="missing",
    ),
    # -- wrong types, field by field ----------------------------------------------------------
    case(
        "effect-unknown",
        "p.yaml",
        "tools:\n  send:\n    effect: maybe\n",
        tool="send",
        field="effect",
        line=3,
        words="'irreversible'",
    ),
    case(
        "effect-int",
        "p.yaml",
        "tools:\n  send:\n    effect: 3\n",
        tool="send",
        field="effect",
        line=3,
        words="'read_only'",
    ),
    case(
        "retry-attempts-word",
        "p.yaml",
        tool("retry: {attempts: many}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="'many'",
    ),
    case(
        "retry-attempts-bool",
        "p.yaml",
        tool("retry: {attempts: true}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words=("integer", "True"),
    ),
    case(
        "retry-attempts-fraction",
        "p.yaml",
        tool("retry: {attempts: 2.5}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="2.5",
    ),
    case(
        "retry-attempts-zero",
        "p.yaml",
        tool("retry: {attempts: 0}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="greater than or equal to 1",
    ),
    case(
        "retry-attempts-huge",
        "p.yaml",
        tool("retry: {attempts: 99999999999999999999999999}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="100",
    ),
    case(
        "retry-on-string",
        "p.yaml",
        tool("retry: {on: TimeoutError}\n"),
        tool="send",
        field="retry.on",
        line=5,
        words=("list", "'TimeoutError'"),
    ),
    case(
        "retry-on-module",
        "p.yaml",
        tool("retry: {on: [os.path]}\n"),
        tool="send",
        field="retry.on",
        line=5,
        words=("'os.path'", "not an exception type"),
        allow=("os",),
    ),
    case(
        "retry-on-module-not-allowed",
        "p.yaml",
        tool("retry: {on: [os.path]}\n"),
        tool="send",
        field="retry.on",
        line=5,
        words=("'os.path' is not allowed", "builtin exception such as TimeoutError"),
        codes="not_allowed",
    ),
    case(
        "retry-on-builtin-non-exception",
        "p.yaml",
        tool("retry: {on: [int]}\n"),
        tool="send",
        field="retry.on",
        line=5,
        words="not an exception type",
    ),
    case(
        "retry-on-unknown-builtin",
        "p.yaml",
        tool("retry: {on: [TimeOutError]}\n"),
        tool="send",
        field="retry.on",
        line=5,
        words="'TimeOutError'",
    ),
    case(
        "retry-on-unimportable",
        "p.yaml",
        tool("retry: {on: [no_such_module_xyz.Error]}\n"),
        tool="send",
        field="retry.on",
        line=5,
        words="cannot import 'no_such_module_xyz'",
        allow=("no_such_module_xyz",),
    ),
    case(
        "retry-wait-nan",
        "p.yaml",
        tool("retry: {wait_max: .nan}\n"),
        tool="send",
        field="retry.wait_max",
        line=5,
        words="finite",
    ),
    case(
        "review-kind-unknown",
        "p.yaml",
        "tools:\n  send:\n    effect: irreversible\n    review: {kind: shout}\n",
        tool="send",
        field="review.kind",
        line=4,
        words="'handoff'",
    ),
    case(
        "review-is-string",
        "p.yaml",
        "tools:\n  send:\n    effect: irreversible\n    review: mark\n",
        tool="send",
        field="review",
        line=4,
        words="mapping",
    ),
    case(
        "review-owner-date",
        "p.yaml",
        "tools:\n  send:\n    effect: irreversible\n    review: {kind: mark, owner: 2020-01-01}\n",
        tool="send",
        field="review.owner",
        line=4,
        words=("string", "date"),
    ),
    case(
        "redact-is-string",
        "p.yaml",
        tool("redact: args.body\n"),
        tool="send",
        field="redact",
        line=5,
        words=("list", "'args.body'"),
    ),
    case(
        "external-ids-is-list",
        "p.yaml",
        tool("external_ids: [result.id]\n"),
        tool="send",
        field="external_ids",
        line=5,
        words="mapping",
    ),
    case(
        "idempotent-word",
        "p.yaml",
        tool("idempotent: sometimes\n"),
        tool="send",
        field="idempotent",
        line=5,
        words=("true or false", "'sometimes'"),
    ),
    case(
        "idempotent-yes",  # YAML 1.2: yes is a string, not a boolean
        "p.yaml",
        tool("idempotent: yes\n"),
        tool="send",
        field="idempotent",
        line=5,
        words=("true or false", "'yes'"),
    ),
    case(
        "idempotent-int",
        "p.yaml",
        tool("idempotent: 1\n"),
        tool="send",
        field="idempotent",
        line=5,
        words="true or false",
    ),
    case(
        "on-failure-unknown",
        "p.yaml",
        tool("on_failure: panic\n"),
        tool="send",
        field="on_failure",
        line=5,
        words="'hold'",
    ),
    case(
        "approval-ttl-word",
        "p.yaml",
        tool("approval: {when: 'true', ttl: soon}\n"),
        tool="send",
        field="approval.ttl",
        line=5,
        words="not a duration",
    ),
    case(
        "approval-ttl-negative",
        "p.yaml",
        tool("approval: {when: 'true', ttl: -5}\n"),
        tool="send",
        field="approval.ttl",
        line=5,
        words="greater than 0",
    ),
    case(
        "approval-ttl-infinite",
        "p.yaml",
        tool("approval: {when: 'true', ttl: .inf}\n"),
        tool="send",
        field="approval.ttl",
        line=5,
        words="finite",
    ),
    case(
        "approval-is-string",
        "p.yaml",
        tool("approval: 'args.amount > 1000'\n"),
        tool="send",
        field="approval",
        line=5,
        words="mapping",
    ),
    case(
        "approval-without-when",
        "p.yaml",
        tool("approval: {ttl: 60}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words="missing",
    ),
    # -- unknown keys at each level -----------------------------------------------------------
    case(
        "unknown-tool-key",
        "p.yaml",
        tool("colour: red\n"),
        tool="send",
        field="colour",
        line=5,
        words="unknown key",
    ),
    case(
        "unknown-undo-key",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: b, colour: red}\n"
        "  b: {effect: read_only}\n",
        tool="a",
        field="undo.colour",
        line=4,
        words="unknown key",
    ),
    case(
        "unknown-retry-key",
        "p.yaml",
        tool("retry:\n  attempts: 2\n  backoff: 3\n"),
        tool="send",
        field="retry.backoff",
        line=7,
        words="unknown key",
    ),
    case(
        "unknown-review-key",
        "p.yaml",
        "tools:\n  send:\n    effect: irreversible\n    review:\n      kind: mark\n"
        "      color: red\n",
        tool="send",
        field="review.color",
        line=6,
        words="unknown key",
    ),
    case(
        "unknown-approval-key",
        "p.yaml",
        tool("approval: {when: 'true', who: bob}\n"),
        tool="send",
        field="approval.who",
        line=5,
        words="unknown key",
    ),
    # -- undo ---------------------------------------------------------------------------------
    case(
        "undo-tool-and-call",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: b, call: os.remove}\n"
        "  b: {effect: read_only}\n",
        tool="a",
        field="undo",
        line=4,
        words="exactly one of tool",
    ),
    case(
        "undo-neither",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {}\n",
        tool="a",
        field="undo",
        line=4,
        words="exactly one of tool",
    ),
    case(
        "undo-call-with-args",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: os.remove, args: {p: args.p}}\n",
        tool="a",
        field="undo",
        line=4,
        words="takes none",
    ),
    case(
        "undo-call-unimportable",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: no_such_module_xyz.refund}\n",
        tool="a",
        field="undo.call",
        line=4,
        words="cannot import 'no_such_module_xyz'",
        allow=("no_such_module_xyz",),
    ),
    case(
        "undo-call-missing-attribute",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: string.no_such_function}\n",
        tool="a",
        field="undo.call",
        line=4,
        words="has no 'no_such_function'",
        allow=("string",),
    ),
    case(
        "undo-call-not-callable",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: string.ascii_letters}\n",
        tool="a",
        field="undo.call",
        line=4,
        words="not a callable",
        allow=("string",),
    ),
    # -- dotted paths outside the allowed modules: a policy file cannot run code ---------------
    case(
        "undo-call-os-system",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: os.system}\n",
        tool="a",
        field="undo.call",
        line=4,
        words=("'os.system' is not allowed", "no module is allowed", "Guard(allow=['os'])"),
        codes="not_allowed",
    ),
    case(
        "undo-call-subprocess",
        "p.toml",
        '[tools.a]\neffect = "reversible"\nundo = {call = "subprocess.check_output"}\n',
        tool="a",
        field="undo.call",
        line=3,
        words="'subprocess.check_output' is not allowed",
        codes="not_allowed",
    ),
    case(
        "undo-call-builtins-eval",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: builtins.eval}\n",
        tool="a",
        field="undo.call",
        line=4,
        words="'builtins.eval' is not allowed",
        codes="not_allowed",
    ),
    case(
        "snapshot-os-system",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: b}\n    snapshot: os.system\n"
        "  b: {effect: read_only}\n",
        tool="a",
        field="snapshot",
        line=5,
        words="'os.system' is not allowed",
        codes="not_allowed",
    ),
    case(
        "probe-subprocess-run",
        "p.yaml",
        tool("probe: subprocess.run\n"),
        tool="send",
        field="probe",
        line=5,
        words="'subprocess.run' is not allowed",
        codes="not_allowed",
    ),
    case(
        "probe-importlib",
        "p.yml",
        tool("probe: importlib.import_module\n"),
        tool="send",
        field="probe",
        line=5,
        words="'importlib.import_module' is not allowed",
        codes="not_allowed",
    ),
    case(
        "undo-call-os-system-while-another-module-is-allowed",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: os.system}\n",
        tool="a",
        field="undo.call",
        line=4,
        words=("'os.system' is not allowed", "allowed: string"),
        codes="not_allowed",
        allow=("string",),
    ),
    case(
        "undo-call-os-system-with-os-allowed",  # os.system is defined in posix (or nt)
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: os.system}\n",
        tool="a",
        field="undo.call",
        line=4,
        words=("'os.system' is not allowed", "defined in module"),
        codes="not_allowed",
        allow=("os",),
    ),
    case(
        "undo-call-prefix-is-not-a-module-boundary",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: stringprep.in_table_a1}\n",
        tool="a",
        field="undo.call",
        line=4,
        words=("'stringprep.in_table_a1' is not allowed", "allowed: string"),
        codes="not_allowed",
        allow=("string",),
    ),
    case(
        "undo-call-imported-into-an-allowed-module",  # string does from collections import ...
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: string._ChainMap}\n",
        tool="a",
        field="undo.call",
        line=4,
        words=("'string._ChainMap' is not allowed", "defined in module 'collections'"),
        codes="not_allowed",
        allow=("string",),
    ),
    case(
        "undo-call-through-a-module-an-allowed-module-imported",  # string does import re as _re
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: string._re.compile}\n",
        tool="a",
        field="undo.call",
        line=4,
        words="cannot import 'string._re'",
        allow=("string",),
    ),
    case(
        "undo-call-not-dotted",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: 'refund()'}\n",
        tool="a",
        field="undo.call",
        line=4,
        words="not a dotted path",
    ),
    case(
        "undo-tool-empty-name",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: ''}\n",
        tool="a",
        field="undo.tool",
        line=4,
        words="not a tool name",
    ),
    case(
        "undo-tool-overlong-name",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: " + "x" * 300 + "}\n",
        tool="a",
        field="undo.tool",
        line=4,
        words="not a tool name",
    ),
    case(
        "undo-args-bad-root",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: b, args: {id: output.id}}\n"
        "  b: {effect: read_only}\n",
        tool="a",
        field="undo.args.id",
        line=4,
        words=("'output.id'", "not a path"),
        codes="bad_path",
    ),
    case(
        "undo-args-not-string",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: b, args: {id: 5}}\n"
        "  b: {effect: read_only}\n",
        tool="a",
        field="undo.args.id",
        line=4,
        words="string",
    ),
    case(
        "reversible-without-undo",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n",
        tool="a",
        field="undo",
        line=2,
        words="needs an undo",
    ),
    case(
        "irreversible-with-undo",
        "p.yaml",
        "tools:\n  a:\n    effect: irreversible\n    undo: {tool: b}\n  b: {effect: read_only}\n",
        tool="a",
        field="undo",
        line=4,
        words="only used with effect 'reversible'",
    ),
    case(
        "read-only-with-undo",
        "p.yaml",
        "tools:\n  a:\n    effect: read_only\n    undo: {call: string.capwords}\n",
        tool="a",
        field="undo",
        line=4,
        words="not 'read_only'",
        allow=("string",),
    ),
    case(
        "undo-cycle-a-b-a",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: b}\n"
        "  b:\n    effect: reversible\n    undo: {tool: a}\n",
        tool="a",
        field="undo.tool",
        line=4,
        words="a -> b -> a",
        codes="undo_cycle",
    ),
    case(
        "undo-cycle-a-a",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {tool: a}\n",
        tool="a",
        field="undo.tool",
        line=4,
        words="the tool itself",
        codes="undo_cycle",
    ),
    case(
        "snapshot-not-callable",
        "p.yaml",
        "tools:\n  a:\n    effect: reversible\n    undo: {call: string.capwords}\n"
        "    snapshot: string.digits\n",
        tool="a",
        field="snapshot",
        line=5,
        words="not a callable",
        allow=("string",),
    ),
    # -- paths --------------------------------------------------------------------------------
    case(
        "external-ids-bad-path",
        "p.yaml",
        tool("external_ids: {id: result..id}\n"),
        tool="send",
        field="external_ids.id",
        line=5,
        words="not a path",
        codes="bad_path",
    ),
    case(
        "redact-bad-root",
        "p.yaml",
        tool("redact: [secrets.card]\n"),
        tool="send",
        field="redact",
        line=5,
        words="'secrets.card'",
        codes="bad_path",
    ),
    case(
        "idempotency-key-result",
        "p.yaml",
        tool("idempotency_key: result.id\n"),
        tool="send",
        field="idempotency_key",
        line=5,
        words="'args.'",
        codes="bad_path",
    ),
    # -- CEL ----------------------------------------------------------------------------------
    case(
        "cel-syntax-error",
        "p.yaml",
        tool("approval: {when: 'args.amount >'}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words=("not valid CEL", "1:14"),
        codes="bad_expression",
    ),
    case(
        "cel-unknown-variable",
        "p.yaml",
        tool("approval: {when: 'amount > 1000'}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words="unknown name(s) amount",
        codes="bad_expression",
    ),
    case(
        "cel-overlong",
        "p.yaml",
        tool("approval: {when: '" + " || ".join(["args.a > 1"] * 500) + "'}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words="over the limit",
        codes="bad_expression",
    ),
    case(
        "cel-nested-too-deeply",
        "p.yaml",
        tool("approval: {when: '" + "(" * 1000 + "true" + ")" * 1000 + "'}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words="Recursion limit",
        codes="bad_expression",
    ),
    case(
        "cel-empty",
        "p.yaml",
        tool("approval: {when: ''}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words="expected a CEL expression",
        codes="bad_expression",
    ),
    case(
        "cel-not-a-string",
        "p.yaml",
        tool("approval: {when: 5}\n"),
        tool="send",
        field="approval.when",
        line=5,
        words="string",
    ),
    # -- duplicate keys, aliases, size, nesting, encoding --------------------------------------
    case(
        "duplicate-tool",
        "p.yaml",
        "tools:\n  a:\n    effect: read_only\n  a:\n    effect: irreversible\n",
        line=4,
        words="duplicate key 'a'",
        codes="syntax",
    ),
    case(
        "duplicate-field",
        "p.yaml",
        "tools:\n  a:\n    effect: read_only\n    effect: irreversible\n",
        line=4,
        words="duplicate key 'effect'",
        codes="syntax",
    ),
    case("billion-laughs", "p.yaml", LAUGHS, line=1, words="aliases", codes="syntax"),
    case(
        "anchor-and-alias",
        "p.yaml",
        "base: &base {effect: read_only}\ntools:\n  a: *base\n",
        line=1,
        words="aliases",
        codes="syntax",
    ),
    case("huge-file", "p.yaml", HUGE, words="over the limit", codes="syntax"),
    case(
        "deeply-nested-flow",
        "p.yaml",
        "tools: " + "[" * 400_000 + "]" * 400_000 + "\n",
        line=1,
        # our own depth limit, or PyYAML's (6.0.4 and newer stop such a file first): either
        # way the file is refused with its path and line; the wording is the parser's
        words="nest",
        codes="syntax",
    ),
    case(
        "deeply-nested-block",
        "p.yaml",
        "tools:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(300)),
        line=51,
        words="nested more than 50 levels deep",
        codes="syntax",
    ),
    case(
        "binary-content",
        "p.yaml",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
        line=1,
        words="not UTF-8",
        codes="syntax",
    ),
    case(
        "latin-1-content",
        "p.yaml",
        "tools:\n  a:\n    effect: irreversible\n    review: {owner: Jos\xe9}\n".encode("latin-1"),
        line=4,
        words="not UTF-8",
        codes="syntax",
    ),
    # -- tool names ---------------------------------------------------------------------------
    case(
        "name-with-space",
        "p.yaml",
        "tools:\n  'send email':\n    effect: read_only\n",
        tool="send email",
        line=2,
        words="not a tool name",
    ),
    case(
        "name-empty",
        "p.yaml",
        "tools:\n  '':\n    effect: read_only\n",
        tool="",
        line=2,
        words="not a tool name",
    ),
    case(
        "name-is-integer",
        "p.yaml",
        "tools:\n  a: {effect: read_only}\n  123:\n    effect: read_only\n",
        tool="123",
        line=3,
        words=("not a tool name", "quote it"),
    ),
    case(
        "name-shell-injection",
        "p.yaml",
        "tools:\n  'x; rm -rf /':\n    effect: read_only\n",
        tool="x; rm -rf /",
        line=2,
        words="not a tool name",
    ),
    case(
        "name-is-null",
        "p.yaml",
        "tools:\n  ~:\n    effect: read_only\n",
        line=2,
        words="keys must be plain strings",
        codes="syntax",
    ),
    case(
        "name-is-list",
        "p.yaml",
        "tools:\n  [a, b]:\n    effect: read_only\n",
        line=2,
        words="keys must be plain strings",
        codes="syntax",
    ),
    # -- not a policy file at all -------------------------------------------------------------
    case("wrong-extension-json", "p.json", '{"tools": {}}', words=".toml policy file"),
    case("no-extension", "policies", "tools: {}\n", words=".toml policy file"),
    case("nonexistent-file", "missing.yaml", MISSING, words="No such file"),
    case("directory", "dir.yaml", DIRECTORY, words="not a file"),
    # -- TOML ---------------------------------------------------------------------------------
    case(
        "toml-syntax",
        "p.toml",
        "[tools.send]\neffect = irreversible\n",
        line=2,
        words="not valid TOML",
        codes="syntax",
    ),
    case(
        "toml-unclosed-table",
        "p.toml",
        "[tools.send\neffect = 'read_only'\n",
        line=1,
        words="not valid TOML",
        codes="syntax",
    ),
    case(
        "toml-duplicate-key",
        "p.toml",
        '[tools.send]\neffect = "read_only"\neffect = "irreversible"\n',
        line=3,
        words="not valid TOML",
        codes="syntax",
    ),
    case("toml-empty", "p.toml", "", field="tools", words="missing"),
    case(
        "toml-tools-array",
        "p.toml",
        "tools = [1, 2]\n",
        field="tools",
        line=1,
        words="a list",
    ),
    case(
        "toml-bad-effect",
        "p.toml",
        '[tools.send]\neffect = "maybe"\n',
        tool="send",
        field="effect",
        line=2,
        words="'irreversible'",
    ),
    case(
        "toml-unknown-key",
        "p.toml",
        '[tools.send]\neffect = "read_only"\ncolour = "red"\n',
        tool="send",
        field="colour",
        line=3,
        words="unknown key",
    ),
    case(
        "toml-attempts-string",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\nretry = {attempts = "3"}\n',
        tool="a",
        field="retry.attempts",
        line=4,
        words="'3'",
    ),
    case(
        "toml-retry-on-module",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\n'
        'retry = {on = ["os.path"]}\n',
        tool="a",
        field="retry.on",
        line=4,
        words="not an exception type",
        allow=("os",),
    ),
    # -- numbers Python cannot convert (over 4,300 digits) or no policy value could be ---------
    case(
        "yaml-int-of-5000-digits",
        "p.yaml",
        tool("retry: {attempts: 1" + "0" * 5000 + "}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "yaml-negative-int-of-5000-digits-in-a-string-field",
        "p.yaml",
        "tools:\n  a:\n    effect: irreversible\n    review:\n      kind: mark\n"
        "      owner: -" + "9" * 5000 + "\n",
        tool="a",
        field="review.owner",
        line=6,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "yaml-int-of-5000-digits-in-a-list",
        "p.yaml",
        tool("redact: [args.card, " + "7" * 5000 + "]\n"),
        tool="send",
        field="redact.1",
        line=5,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "yaml-int-of-5000-digits-at-the-top",
        "p.yaml",
        "version: " + "1" * 5000 + "\ntools: {}\n",
        field="version",
        line=1,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "yaml-hex-int-of-300-digits",  # converts (no digit limit in base 16), but no field takes it
        "p.yaml",
        tool("retry: {attempts: 0x" + "f" * 300 + "}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "yaml-base-60-int-of-a-megabyte",  # YAML 1.1 1:2:3 would take minutes to convert
        "p.yaml",
        tool("retry: {attempts: 1" + ":1" * 400_000 + "}\n"),
        tool="send",
        field="retry.attempts",
        line=5,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "yaml-int-of-5000-digits-as-a-tool-name",
        "p.yaml",
        "tools:\n  ? " + "1" * 5000 + "\n  : {effect: read_only}\n",
        line=2,
        words="keys must be plain strings",
        codes="syntax",
    ),
    case(
        "yaml-hex-int-of-300-digits-as-a-tool-name",
        "p.yaml",
        "tools:\n  a: {effect: read_only}\n  0x" + "f" * 300 + ": {effect: read_only}\n",
        line=3,
        words="keys must be plain strings",
        codes="syntax",
    ),
    case(
        "toml-int-of-5000-digits",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\n'
        "retry = {attempts = " + "1" * 5000 + "}\n",
        tool="a",
        field="retry.attempts",
        line=4,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "toml-int-of-5000-digits-in-a-table",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\n'
        "[tools.a.retry]\nwait_max = 1\nattempts = -" + "2" * 5000 + "\n",
        tool="a",
        field="retry.attempts",
        line=6,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "toml-int-of-5000-digits-with-underscores",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\n'
        "retry = {attempts = " + "1_000" * 2000 + "}\n",
        tool="a",
        field="retry.attempts",
        line=4,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "toml-hex-int-of-300-digits",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\n'
        "retry = {attempts = 0x" + "f" * 300 + "}\n",
        tool="a",
        field="retry.attempts",
        line=4,
        words="more than 100 digits",
        codes="too_large",
    ),
    case(
        "toml-cel-syntax",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark"}\n'
        '[tools.a.approval]\nwhen = "args.x >"\n',
        tool="a",
        field="approval.when",
        line=5,
        words="not valid CEL",
        codes="bad_expression",
    ),
    case(
        "toml-undo-cycle",
        "p.toml",
        '[tools.a]\neffect = "reversible"\nundo = {tool = "b"}\n'
        '[tools.b]\neffect = "reversible"\nundo = {tool = "a"}\n',
        tool="a",
        field="undo.tool",
        words="undo cycle",
        codes="undo_cycle",
    ),
    case(
        "toml-date-owner",
        "p.toml",
        '[tools.a]\neffect = "irreversible"\nreview = {kind = "mark", owner = 1979-05-27}\n',
        tool="a",
        field="review.owner",
        line=3,
        words="date",
    ),
    case(
        "toml-deeply-nested",
        "p.toml",
        "tools = " + "[" * 100_000 + "]" * 100_000 + "\n",
        words="nested too deeply",
        codes="syntax",
    ),
    case(
        "toml-binary",
        "p.toml",
        b"\x00\xff\xfe",
        line=1,
        words="not UTF-8",
        codes="syntax",
    ),
    case(
        "toml-reversible-without-undo",
        "p.toml",
        '[tools.a]\neffect = "reversible"\n',
        tool="a",
        field="undo",
        words="needs an undo",
    ),
]


def write(tmp_path: Path, filename: str, content: Any) -> Path:
    path = tmp_path / filename
    if content is MISSING:
        return path
    if content is DIRECTORY:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def refusal(path: Path, allow: tuple[str, ...] = ()) -> PolicyError:
    """The PolicyError ``load`` raises; any other exception (or none) fails the test."""
    try:
        policy_file.load(path, allow=allow)
    except BaseException as exc:
        if not isinstance(exc, PolicyError):
            pytest.fail(f"load raised {type(exc).__name__}, not PolicyError: {exc!r}")
        return exc
    pytest.fail(f"{path.name} loaded, but it should have been refused")


def assert_readable(message: str) -> None:
    assert "Traceback" not in message
    assert "errors.pydantic.dev" not in message
    assert "validation error for" not in message  # pydantic's own summary line
    assert "\n" not in message, message
    assert len(message) < 1_000, message


def test_the_corpus_is_large_and_distinct() -> None:
    ids = [p.id for p in HOSTILE]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("filename", "content", "expect"), HOSTILE)
def test_hostile_file_is_refused_with_a_clear_policy_error(
    tmp_path: Path, filename: str, content: Any, expect: Expect
) -> None:
    path = write(tmp_path, filename, content)
    started = time.perf_counter()
    error = refusal(path, expect.allow)
    assert time.perf_counter() - started < 2.0
    message = str(error)
    assert_readable(message)
    assert error.file == str(path)
    assert message.startswith(str(path)), message  # the file, once, first
    if expect.line is not None:
        assert error.line == expect.line, message
        assert message.startswith(f"{path}:{expect.line}: "), message
    if expect.tool is not None:
        assert error.tool == expect.tool, message
        assert repr(expect.tool[:80]) in message
    if expect.field is not None:
        assert error.field == expect.field, message
        assert expect.field in message
    for word in expect.words:
        assert word in message, f"{word!r} not in {message!r}"

    _, found = policy_file.problems(path, allow=expect.allow)
    assert found, "problems() found nothing"
    assert all(isinstance(p, Problem) for p in found)
    assert any(p.severity == "error" for p in found)
    for problem in found:
        assert problem.file == str(path)
        assert_readable(str(problem))
    first = found[0]
    assert (first.tool, first.field, first.line) == (error.tool, error.field, error.line)
    codes = {p.code for p in found}
    for code in expect.codes:
        assert code in codes, f"{code} not in {codes}"


def test_every_problem_is_listed_and_load_says_how_many_more(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        "tools:\n"
        "  a: {effect: maybe}\n"
        "  b: {effect: irreversible, review: {kind: mark}, retry: {attempts: 0}}\n"
        "  c: {effect: irreversible, review: {kind: mark}, approval: {when: 'x >'}}\n",
    )
    _, found = policy_file.problems(path)
    assert [(p.tool, p.field, p.line) for p in found] == [
        ("a", "effect", 2),
        ("b", "retry.attempts", 3),
        ("c", "approval.when", 4),
    ]
    message = str(refusal(path))
    assert "(and 2 more problem(s)" in message
    assert f"guardrail policy check {path}" in message


# -- valid controls ---------------------------------------------------------------------------

VALID = [
    pytest.param(
        "p.yaml",
        "tools:\n  fetch:\n    effect: read_only\n    retry:\n      on: [TimeoutError, "
        "ConnectionError]\n      attempts: 2\n",
        {"fetch"},
        id="yaml-retry-on-key",
    ),
    pytest.param(
        "p.yaml",
        "tools:\n  on: {effect: read_only}\n  yes: {effect: read_only}\n  off: {effect: read_only}"
        "\n  no: {effect: read_only}\n",
        {"on", "yes", "off", "no"},
        id="yaml-1.1-boolean-words-as-tool-names",
    ),
    pytest.param(
        "p.yml",
        "\ufeff# with a byte-order mark\ntools:\n  a: {effect: read_only, idempotent: true}\n",
        {"a"},
        id="yaml-bom",
    ),
    pytest.param(
        "p.yaml",
        textwrap.dedent(
            """\
            version: 1
            tools:
              create_order:
                effect: reversible
                undo: {tool: cancel_order, args: {order_id: result.order_id}}
                external_ids: {order_id: result.order_id}
              cancel_order: {effect: irreversible, review: {kind: mark}}
              charge_payment:
                effect: reversible
                undo: {call: string.capwords}
                approval: {when: "args.amount > 1000", ttl: 1h}
                retry: {attempts: 3, on: [TimeoutError]}
              send_email:
                effect: irreversible
                review: {kind: correct, owner: support, instructions: "Send a correction"}
                redact: [args.body]
                on_failure: hold
            """
        ),
        {"create_order", "cancel_order", "charge_payment", "send_email"},
        id="yaml-design-example",
    ),
    pytest.param(
        "p.toml",
        textwrap.dedent(
            """\
            [tools.fetch]
            effect = "read_only"
            retry = {on = ["TimeoutError"], attempts = 2}

            [tools.charge]
            effect = "reversible"
            undo = {tool = "refund", args = {id = "result.id"}}
            approval = {when = "args.amount > 1000", ttl = "15m"}

            [tools.refund]
            effect = "irreversible"
            review = {kind = "correct", owner = "billing"}
            """
        ),
        {"fetch", "charge", "refund"},
        id="toml-equivalent",
    ),
]


VALID.append(
    pytest.param(
        "p.toml",
        '\ufeff[tools.a]\neffect = "read_only"\n',
        {"a"},
        id="toml-bom",
    )
)


@pytest.mark.parametrize(("filename", "content", "names"), VALID)
def test_valid_controls_load(tmp_path: Path, filename: str, content: str, names: set[str]) -> None:
    path = write(tmp_path, filename, content)
    loaded = {p.name: p for p in policy_file.load(path, allow=["string"])}
    assert set(loaded) == names
    assert policy_file.problems(path, allow=["string"])[1] == []
    assert [p for p in policy_check.check(path, allow=["string"]) if p.severity == "error"] == []


def test_retry_on_key_survives_yaml_1_1_booleans(tmp_path: Path) -> None:
    filename, content = VALID[0].values[:2]
    (policy,) = policy_file.load(write(tmp_path, str(filename), content))
    assert policy.retry is not None
    assert policy.retry.on == (TimeoutError, ConnectionError)
    assert policy.retry.attempts == 2


# -- conditions that fail at run time ---------------------------------------------------------

RUNTIME = [
    pytest.param("args.missing > 1", {"amount": 5}, ("args.missing", "no value for 'missing'")),
    pytest.param("args.amount > 1000", {"amount": "5000"}, ("args.amount > 1000", "TypeError")),
    pytest.param("args.amount", {"amount": 5}, ("gave 5", "expected true or false")),
    pytest.param("args.name", {"name": "x"}, ("gave 'x'", "expected true or false")),
    pytest.param("args.a / args.b > 1", {"a": 1, "b": 0}, ("division by zero",)),
    pytest.param("args.items[3] > 1", {"items": [1]}, ("IndexError",)),
    pytest.param("args.n + 1 > 0", {"n": 9223372036854775807}, ("overflow",)),
]


@pytest.mark.parametrize(("expression", "args", "words"), RUNTIME)
def test_condition_failing_at_run_time_raises_condition_error(
    expression: str, args: dict[str, Any], words: tuple[str, ...]
) -> None:
    condition = Condition(expression)  # compiles: the failure is in the data
    try:
        condition.holds({"args": args, "tool": "charge", "run": {"id": "r", "metadata": {}}})
    except BaseException as exc:
        if not isinstance(exc, ConditionError):
            pytest.fail(f"holds raised {type(exc).__name__}, not ConditionError: {exc!r}")
        message = str(exc)
    else:
        pytest.fail(f"{expression!r} held over {args!r}")
    assert_readable(message)
    assert expression in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_has_guards_an_absent_argument() -> None:
    condition = Condition("has(args.missing) && args.missing > 1")
    assert condition.holds({"args": {"amount": 5}}) is False
    assert condition.holds({"args": {"missing": 2}}) is True


@pytest.mark.parametrize(
    ("when", "args"),
    [
        ("args.missing > 1", {"to": "a@example.com"}),
        ("args.amount > 1000", {"to": "a@example.com", "amount": "5000"}),
        ("args.to", {"to": "a@example.com"}),
    ],
    ids=["absent-argument", "string-amount", "non-boolean"],
)
def test_a_condition_that_fails_halts_the_run_for_approval(
    tmp_path: Path, when: str, args: dict[str, Any]
) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"tools:\n  send:\n    effect: irreversible\n    review: {{kind: mark}}\n"
        f"    approval: {{when: {json.dumps(when)}}}\n",
    )
    calls: list[dict[str, Any]] = []

    def send(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "sent"

    guard = Guard(store=f"sqlite:///{tmp_path}/g.db")
    try:
        guard.load_policies(path)
        with pytest.raises(RunHalted) as halted, guard.run(agent="mailer") as run:
            run.call("send", args, fn=send)
        assert calls == []  # fail closed: the tool did not run
        assert halted.value.status == "awaiting_approval"
        assert halted.value.tool == "send"
        assert when in str(halted.value)
        assert guard.require_run(run.id).status == "awaiting_approval"
        (item,) = guard.store.review_items(run_id=run.id, status="open")
        assert item.reason == "approval"
        assert "could not be evaluated" in (item.instructions or "")
    finally:
        guard.close()


# -- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()

CLEAN = """\
tools:
  create_order:
    effect: reversible
    undo: {tool: cancel_order, args: {order_id: result.id}}
  cancel_order: {effect: irreversible, review: {kind: mark, owner: ops}}
  lookup: {effect: read_only}
"""


def check_cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["policy", "check", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize(("filename", "content", "expect"), HOSTILE)
def test_cli_reports_hostile_files_as_json(
    tmp_path: Path, filename: str, content: Any, expect: Expect
) -> None:
    path = write(tmp_path, filename, content)
    code, output = check_cli(str(path), "--json", *(f"--allow={a}" for a in expect.allow))
    assert "Traceback" not in output
    if path.suffix not in policy_source.SUFFIXES:  # not a policy file: read as a pack name
        assert code == 2, output
        return
    assert code == 1, output
    report = json.loads(output)
    assert report["ok"] is False
    assert report["file"] == str(path)
    assert any(p["severity"] == "error" for p in report["problems"])
    assert "Traceback" not in output and "errors.pydantic.dev" not in output


def test_cli_table_output_exits_1_on_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", tool("retry: {attempts: many}\n"))
    code, output = check_cli(str(path))
    assert code == 1
    assert "retry.attempts" in output
    assert "Traceback" not in output


def test_cli_clean_file_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", CLEAN)
    code, output = check_cli(str(path))
    assert code == 0, output
    assert "ok" in output
    code, output = check_cli(str(path), "--json")
    assert code == 0, output
    assert json.loads(output) == {"file": str(path), "ok": True, "problems": []}


def test_cli_reports_a_world_changing_tool_with_neither_undo_nor_review(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "tools:\n  wipe: {effect: irreversible}\n")
    code, output = check_cli(str(path), "--json")
    assert code == 1
    (problem,) = json.loads(output)["problems"]
    assert (problem["code"], problem["tool"], problem["line"]) == ("no_undo_or_review", "wipe", 2)


TOOLKIT = """\
def create_order(item):
    return {"id": "o-1"}


def send_email(to):
    return "sent"


def delete_everything():
    return None


TOOLS = [create_order, send_email, delete_everything]
"""


@pytest.fixture
def toolkit_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    name = "corpus_toolkit_for_policy_check"
    (tmp_path / f"{name}.py").write_text(TOOLKIT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path.cwd()))
    yield name
    sys.modules.pop(name, None)


def test_cli_checks_against_a_toolkit(tmp_path: Path, toolkit_module: str) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        "tools:\n"
        "  create_order:\n    effect: reversible\n    undo: {tool: refund_order}\n"
        "  send_email: {effect: irreversible, review: {kind: correct}}\n"
        "  old_tool: {effect: read_only}\n",
    )
    code, output = check_cli(str(path), "--tools", f"{toolkit_module}:TOOLS", "--json")
    assert code == 1, output
    report = json.loads(output)
    assert report["ok"] is False
    found = {(p["code"], p["tool"]): p for p in report["problems"]}
    assert ("no_policy", "delete_everything") in found
    missing = found[("missing_undo_tool", "create_order")]
    assert "'refund_order'" in missing["message"]
    assert "toolkit" in missing["message"]
    assert missing["line"] == 4
    assert found[("not_in_toolkit", "old_tool")]["severity"] == "warning"
    assert ("no_policy", "send_email") not in found


def test_cli_toolkit_that_matches_is_clean(tmp_path: Path, toolkit_module: str) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        "tools:\n"
        "  create_order:\n    effect: reversible\n    undo: {tool: delete_everything}\n"
        "  send_email: {effect: irreversible, review: {kind: correct}}\n",
    )
    code, output = check_cli(str(path), "--tools", f"{toolkit_module}:TOOLS", "--json")
    assert code == 0, output  # delete_everything is used only as an undo: no policy needed
    assert json.loads(output)["ok"] is True


@pytest.mark.parametrize(
    "spec", ["no_colon", "no_such_module_xyz:TOOLS", "corpus_toolkit_for_policy_check:NOPE"]
)
def test_cli_bad_toolkit_is_a_usage_error(tmp_path: Path, toolkit_module: str, spec: str) -> None:
    path = write(tmp_path, "p.yaml", CLEAN)
    code, output = check_cli(str(path), "--tools", spec)
    assert code == 2, output
    assert "Traceback" not in output
