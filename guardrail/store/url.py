"""Store URLs without a database toolkit: ``sqlite:///relative.db``, ``sqlite:////abs.db``,
``postgresql://`` or ``postgresql+psycopg://user:password@host:port/db?options=...``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from guardrail.errors import StoreError

EXPECTED = "expected sqlite:///path.db or postgresql+psycopg://user@host/db"
_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgresql+psycopg": "postgresql"}


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: its backend, and what connecting needs."""

    scheme: str  # as written: sqlite, postgresql or postgresql+psycopg
    backend: str  # sqlite | postgresql
    database: str  # the SQLite file, or the PostgreSQL database name
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    query: tuple[tuple[str, str], ...] = ()

    def shown(self) -> str:
        """The URL as it may be printed: the password as ``***``."""
        if self.backend == "sqlite":
            return f"{self.scheme}:///{self.database}{self._query()}"
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":***"
            auth += "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{auth}{host}{port}/{quote(self.database)}{self._query()}"

    def _query(self) -> str:
        if not self.query:
            return ""
        return "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.query)

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (query options passed as they are)."""
        args: dict[str, Any] = {}
        for name, value in (
            ("user", self.username),
            ("password", self.password),
            ("host", self.host),
            ("port", self.port),
            ("dbname", self.database or None),
        ):
            if value is not None:
                args[name] = value
        args.update(dict(self.query))
        return args

    def sqlalchemy(self) -> str:
        """The URL for SQLAlchemy (the migrations), with psycopg 3 as PostgreSQL's driver."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.database}"
        user = ""
        if self.username is not None:
            user = quote(self.username, safe="")
            if self.password is not None:
                user += ":" + quote(self.password, safe="")
            user += "@"
        host = f"[{self.host}]" if self.host and ":" in self.host else (self.host or "")
        port = f":{self.port}" if self.port is not None else ""
        return f"postgresql+psycopg://{user}{host}{port}/{quote(self.database)}{self._query()}"


def parse(url: str) -> StoreURL:
    """Parse a store URL, or raise a `StoreError` saying what is expected."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise StoreError(f"store URL {url!r} is not a database URL; {EXPECTED}", field="store")
    backend = _SCHEMES.get(scheme.lower())
    if backend is None:
        shown = _without_password(url)
        raise StoreError(
            f"store URL {shown!r} names a database guardrail does not support; {EXPECTED}",
            field="store",
        )
    if backend == "sqlite":
        path, _, query = rest.partition("?")
        if path and not path.startswith("/"):
            raise StoreError(
                f"store URL {url!r} names no file: a SQLite URL has three slashes, "
                "sqlite:///relative.db or sqlite:////absolute.db",
                field="store",
            )
        return StoreURL(scheme, backend, unquote(path[1:]), query=_query(url, query))
    try:
        parts = urlsplit(f"postgresql://{rest}")
        port = parts.port
    except ValueError as exc:
        raise StoreError(
            f"store URL {_without_password(url)!r} is not a database URL ({exc}); {EXPECTED}",
            field="store",
        ) from None
    return StoreURL(
        scheme,
        backend,
        unquote(parts.path.lstrip("/")),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=unquote(parts.hostname) if parts.hostname else None,
        port=port,
        query=_query(url, parts.query),
    )


def shown(url: str) -> str:
    """A store URL as it may be printed: without its password (unparseable: not at all)."""
    try:
        return parse(url).shown()
    except StoreError:
        return _without_password(url) if "://" in url else "the given URL"


def _query(url: str, query: str) -> tuple[tuple[str, str], ...]:
    try:
        return tuple(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise StoreError(
            f"store URL {_without_password(url)!r} has a malformed query ({query!r}); {EXPECTED}",
            field="store",
        ) from None


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth.split("/")[0]:
        return url
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{host}"
