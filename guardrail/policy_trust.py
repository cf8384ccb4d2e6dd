"""What a policy file may name: the trust boundary between a policy file (data, which whoever
can edit it must not be able to turn into code) and the application's code.

A dotted path in a file (``undo.call``, ``snapshot``, ``probe``, an exception type in
``retry.on``) resolves only to a function registered with the guard (``guard.register``,
``@guard.tool``) or to an object defined in a module the application allows
(``allow=["myapp.payments"]``, also from the environment variable ``GUARDRAIL_POLICY_ALLOW``).
Anything else is refused before any module is imported (importing runs code).
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import os
import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from guardrail.errors import PolicyError

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
ENV_ALLOW = "GUARDRAIL_POLICY_ALLOW"
# Nothing is allowed unless the application says so. The policy packs of guardrail.policies are
# code loaded by name (guard.load_policies("mcp-filesystem")), not dotted paths in a file, so they
# need no entry here.
DEFAULT_ALLOW: tuple[str, ...] = ()
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass(frozen=True)
class Allowed:
    """What the dotted paths of a policy file may resolve to.

    ``modules``: module prefixes, matched on module boundaries (``myapp`` allows ``myapp`` and
    ``myapp.payments``, not ``myapp_evil``). ``functions``: functions registered with the guard,
    by ``module.qualname``. A path naming a registered function resolves to it without any
    import; any other path must lie in an allowed module, which is checked before importing it,
    and must resolve to an object defined there (its ``__module__``), so that ``myapp.system``,
    where ``myapp`` did ``from os import system``, is refused.
    """

    modules: tuple[str, ...] = ()
    functions: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)

    def covers(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def shown(self) -> str:
        if not self.modules:
            return "no module is allowed"
        return "allowed: " + ", ".join(self.modules)[:300]


def check_allow(prefixes: Iterable[str], *, source: str = "allow") -> tuple[str, ...]:
    """Module prefixes as given to ``allow=`` (a single string counts as one prefix)."""
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    checked = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not _MODULE.match(prefix.strip()):
            raise PolicyError(
                f"{source}: {str(prefix)[:80]!r} is not a module prefix; expected a dotted module "
                "name such as 'myapp.payments'",
                field="allow",
            )
        checked.append(prefix.strip())
    return tuple(checked)


def allowed(allow: Iterable[str] = (), functions: Iterable[Callable[..., Any]] = ()) -> Allowed:
    """The :class:`Allowed` of a load: :data:`DEFAULT_ALLOW`, the prefixes in the environment
    variable ``GUARDRAIL_POLICY_ALLOW`` (comma- or space-separated: for the command line),
    ``allow``, and the registered ``functions``."""
    env = os.environ.get(ENV_ALLOW, "").strip()
    modules = (
        *DEFAULT_ALLOW,
        *(check_allow(re.split(r"[\s,]+", env), source=ENV_ALLOW) if env else ()),
        *check_allow(allow),
    )
    named: dict[str, Callable[..., Any]] = {}
    for fn in functions:
        fn = getattr(fn, "__guardrail_raw__", fn)
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            named.setdefault(f"{module}.{qualname}", fn)
    return Allowed(tuple(dict.fromkeys(modules)), named)


def exception_type(name: str, allowed: Allowed) -> type[BaseException]:
    """A builtin exception by name (``TimeoutError``) or a dotted path (``httpx.ReadTimeout``)
    into an allowed module (importing a module runs its code, so only allowed ones are)."""
    if "." in name:
        found = _import(name, "exception type", allowed)
    else:
        found = getattr(builtins, name, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(
            f"{name!r} is not an exception type; use a builtin name (TimeoutError) or a dotted "
            "path (package.module.Error)"
        )
    return found


def dotted_callable(path: str, allowed: Allowed) -> Callable[..., Any]:
    """The function ``path`` names: registered with the guard, or defined in an allowed module."""
    if _DOTTED.match(path) and path in allowed.functions:
        return allowed.functions[path]
    found = _import(path, "callable", allowed)
    if not callable(found):
        raise ValueError(f"{path!r} is a {type(found).__name__}, not a callable")
    home = _home(found)
    if home is None or not allowed.covers(home):
        where = f"in module {home!r}" if home is not None else "in no module"
        raise ValueError(
            f"{path!r} is not allowed: it is defined {where}, not in an allowed module ("
            f"{allowed.shown()}); a policy file may name only functions defined in the allowed "
            "modules themselves, not what they import"
        )
    return found  # type: ignore[no-any-return]


def _home(found: Any) -> str | None:
    """The module that defines a function, class or method (for an instance: its class)."""
    if isinstance(found, types.FunctionType | types.BuiltinFunctionType | types.MethodType | type):
        module = getattr(found, "__module__", None)
    else:  # a callable instance (functools.partial, an object with __call__): its class
        module = getattr(type(found), "__module__", None)
    return module if isinstance(module, str) else None


def _import(path: str, what: str, allowed: Allowed) -> Any:
    if not _DOTTED.match(path):
        raise ValueError(f"{path!r} is not a dotted path to a {what} (package.module.name)")
    module_name, _, attribute = path.rpartition(".")
    if not allowed.covers(module_name):  # checked before the import: importing runs code
        how = (
            f"Guard(allow=[{module_name!r}]), `guardrail policy check --allow {module_name}` or "
            f"{ENV_ALLOW}={module_name}"
        )
        if what == "exception type":
            raise ValueError(
                f"{path!r} is not allowed: a policy file may import only modules the application "
                f"allows ({allowed.shown()}); use a builtin exception such as TimeoutError, or, "
                f"if {module_name!r} is trusted code, allow it: {how}"
            )
        raise ValueError(
            f"{path!r} is not allowed: a policy file may name only functions registered with the "
            f"guard (guard.register, @guard.tool) and ones defined in the modules the "
            f"application allows ({allowed.shown()}); if {module_name!r} is your own code, safe "
            f"to run on what an agent sends, allow it: {how}"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"module {module_name!r} has no {attribute!r}")
    return getattr(module, attribute)
