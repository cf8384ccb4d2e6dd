"""Where a command's guard comes from: the application's own, or a store with policy files.

Every command that decides about runs or runs undos (``abort``, ``resume``, ``resolve``,
``approve``, ``reject``, ``recover``, ``show``, ``serve``, ``mcp-proxy``) takes the same options:

- ``--app MODULE:ATTRIBUTE`` (or ``GUARDRAIL_APP``), as uvicorn, Flask and Celery name an
  application: a `Guard`, or a function of no arguments returning one, with its policies, tools,
  undo callables and hooks. The module is imported with the current directory on the path. The
  guard brings its own store: ``--store`` may be left out, and one that names another store is
  an error. A guard the command made (from a function) is closed at the end; a module's guard
  belongs to the module and is left open.
- ``--policy FILE`` and ``--pack NAME`` (``--pack-option KEY=VALUE``), for deployments without
  code: packs load first, then files; both load on top of the app's guard when there is one.
- ``--force`` (where a command compensates): go on without the undos it lacks, which then become
  review items, instead of refusing.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from guardrail.errors import PolicyError, StoreError

if TYPE_CHECKING:  # imported where used: building the command table stays light
    from guardrail.guard import Guard
    from guardrail.lifecycle import PlannedStep
    from guardrail.store import RunRecord

NOT_FOUND, USAGE, CONFLICT = 1, 2, 3
DEFAULT_STORE = "sqlite:///guardrail.db"

App = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar="GUARDRAIL_APP",
        show_envvar=True,
        help="The application's guard as MODULE:ATTRIBUTE (a Guard, or a function returning "
        "one), with its policies, tools and undo callables; it brings its own store. Imported "
        "with the current directory on the path.",
    ),
]
AppStore = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="GUARDRAIL_STORE",
        help="Store URL (default sqlite:///guardrail.db; with --app, the app guard's store, "
        "and a different one is an error).",
    ),
]
Policies = Annotated[
    list[str] | None,
    typer.Option("--policy", help="A YAML or TOML policy file, e.g. with the undos (repeatable)."),
]
Packs = Annotated[list[str] | None, typer.Option("--pack", help="A policy pack (repeatable).")]
PackOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--pack-option", help="KEY=VALUE for the packs, e.g. root_dir=/srv/agent (repeatable)."
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Compensate even without the undos this process lacks: they become review items "
        "(without it the command refuses and says what to load).",
    ),
]

LOAD_HINT = (
    "pass the application's guard (--app MODULE:ATTRIBUTE, or set GUARDRAIL_APP) or the policies "
    "that name the undos (--policy FILE, --pack NAME)"
)


def fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


@dataclass(frozen=True, slots=True)
class Loads:
    """What a command was asked to load besides its store."""

    app: str | None = None
    policy: Sequence[str] = ()
    pack: Sequence[str] = ()
    pack_options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        app: str | None,
        policy: Sequence[str] | None,
        pack: Sequence[str] | None,
        pack_option: Sequence[str] | None,
    ) -> Loads:
        options: dict[str, str] = {}
        for text in pack_option or ():
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise typer.BadParameter(
                    f"{text!r}: expected KEY=VALUE", param_hint="--pack-option"
                )
            options[key] = value
        return cls(app or None, tuple(policy or ()), tuple(pack or ()), options)


class AppNotFound(Exception):
    """``--app`` does not name a guard; the message says what was wrong."""


def load_app(spec: str) -> tuple[Guard, bool]:
    """The guard ``MODULE:ATTRIBUTE`` names, and whether this call made it (a factory's guard,
    which the caller closes) rather than finding it (a module's guard, which the module owns)."""
    from guardrail.guard import Guard
    from guardrail.redact import describe

    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppNotFound(f"--app {spec!r}: expected MODULE:ATTRIBUTE, e.g. myapp.agent:guard")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise AppNotFound(
                f"--app {spec!r}: there is no module {missing!r} here (looked in the current "
                f"directory {cwd} and on the Python path); run the command where the module "
                "imports, or set PYTHONPATH"
            ) from None
        raise AppNotFound(
            f"--app {spec!r}: importing {module_name} failed: {describe(exc)}"
        ) from None
    except (Exception, SystemExit) as exc:
        raise AppNotFound(
            f"--app {spec!r}: importing {module_name} failed: {describe(exc)}"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            close = difflib.get_close_matches(part, [n for n in dir(found) if n[:1] != "_"], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AppNotFound(
                f"--app {spec!r}: module {module_name!r} has no attribute {attribute!r}{hint}"
            )
        found = getattr(found, part)
    if isinstance(found, Guard):
        return found, False
    if not callable(found):
        raise AppNotFound(
            f"--app {spec!r}: {attribute} is of type {type(found).__name__}, not a Guard (or a "
            "function returning one)"
        )
    try:
        made = found()
    except Exception as exc:
        raise AppNotFound(
            f"--app {spec!r}: calling {attribute}() failed: {describe(exc)}"
        ) from None
    if not isinstance(made, Guard):
        raise AppNotFound(
            f"--app {spec!r}: {attribute}() returned an object of type {type(made).__name__}, "
            "not a Guard"
        )
    return made, True


def same_store(given: str, url: str) -> bool:
    """Whether the URL ``given`` names the store at ``url`` (passwords and drivers aside;
    SQLite files by their real path)."""
    from guardrail.errors import StoreError
    from guardrail.store.url import parse

    try:
        a, b = parse(given), parse(url)
    except StoreError:
        return given == url
    if a.backend != b.backend:
        return False
    if a.backend == "sqlite":
        return os.path.realpath(a.database) == os.path.realpath(b.database)
    return (a.host, a.port, a.database, a.username, dict(a.query)) == (
        b.host,
        b.port,
        b.database,
        b.username,
        dict(b.query),
    )


def _shown(url: str) -> str:
    """A store URL as it may be printed: without its password."""
    from guardrail.store.url import shown

    return shown(url)


def open_guard(
    store: str | None, loads: Loads, *, strict: bool = False, must_exist: bool = True
) -> tuple[Guard, bool]:
    """The command's guard (and whether the command must close it), or exit with a message:
    usage errors (a bad --app, --store against the app's store, a policy that does not load)
    exit 2, a store that is not there exits 1."""
    from guardrail.guard import Guard

    if loads.app:
        try:
            guard, owned = load_app(loads.app)
        except AppNotFound as exc:
            fail(str(exc), USAGE)
        if store and not same_store(store, guard.store.url):
            if owned:
                guard.close()
            fail(
                f"--store {_shown(store)} is not the store of the guard of --app {loads.app} "
                f"({guard.store.url}); leave --store (and GUARDRAIL_STORE) out, the app's guard "
                "brings its own",
                USAGE,
            )
    else:
        url = store or DEFAULT_STORE
        path = url.removeprefix("sqlite:///")
        if must_exist and url.startswith("sqlite:///") and not os.path.exists(path):
            fail(f"no store at {url} (pass --store URL or set GUARDRAIL_STORE)", NOT_FOUND)
        try:
            guard, owned = Guard(store=url, strict=strict), True
        except StoreError as exc:
            fail(str(exc), NOT_FOUND)
    try:
        for name in loads.pack:
            guard.load_policies(name, **loads.pack_options)
        for file in loads.policy:
            guard.load_policies(file)
    except PolicyError as exc:
        if owned:
            guard.close()
        fail(str(exc), USAGE)
    return guard, owned


@contextmanager
def loaded(store: str | None, loads: Loads, **options: Any) -> Iterator[Guard]:
    """`open_guard` for a ``with`` block; closes the guard if the command made it."""
    guard, owned = open_guard(store, loads, **options)
    try:
        yield guard
    finally:
        if owned:
            guard.close()


def warn_mismatch(guard: Guard, run: RunRecord) -> bool:
    """Warn (stderr) when the run started under other policies than the ones loaded here."""
    from guardrail.decisions import policy_mismatch

    problem = policy_mismatch(guard, run)
    if problem is None:
        return False
    warn(
        f"{problem}. Load the run's own: the application's --app MODULE:ATTRIBUTE (or "
        "GUARDRAIL_APP), or the --policy files and --pack packs it ran with"
    )
    return True


def refusal(run_id: str, steps: Sequence[PlannedStep], what: str) -> str:
    """Why a command refuses to compensate, and what to pass instead."""
    from guardrail.decisions import explain_missing

    return explain_missing(
        run_id,
        steps,
        f"{LOAD_HINT}; or {what} anyway with --force, which lists them for a person instead",
    )


def forced(run_id: str, steps: Sequence[PlannedStep]) -> None:
    listed = ", ".join(f"action {s.seq} ({s.tool})" for s in steps[:10])
    more = f" and {len(steps) - 10} more" if len(steps) > 10 else ""
    warn(
        f"--force: run {run_id}: {len(steps)} undo(s) are not available here; {listed}{more} "
        "will be listed for a person to undo by hand"
    )
