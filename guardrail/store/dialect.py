"""What differs between the SQL databases the store runs on, as a few small hooks.

`guardrail.store.sql.SQLStore` builds every statement with ``?`` placeholders and runs a
transaction as a list of `Statement`; a dialect connects, writes that list as one transaction
(checking what must hold), recognises a unique violation and decodes JSON columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

NO_CHECK, FENCE, EXPECT = 0, 1, 2


class Statement(NamedTuple):
    """One statement of a transaction; ``check``: FENCE or EXPECT when it must change exactly
    one row (else the transaction is rolled back), NO_CHECK otherwise. ``prepare``: worth
    preparing where the database plans statements (False for one of many shapes, such as an
    IN list of any length)."""

    sql: str
    params: Sequence[Any]
    check: int = NO_CHECK
    prepare: bool = True


class FenceLost(Exception):
    """A FENCE statement changed nothing: the run is no longer at the fence."""


class Rejected(Exception):
    """An EXPECT statement changed nothing: a write's ``expect`` did not hold."""


class Broken(Exception):
    """A transaction could not even be rolled back: its connection is not reused."""


class Dialect:
    """The hooks; `guardrail.store.sqlite` and `guardrail.store.postgres` fill them in."""

    name: str = ""

    def connect(self) -> Any:
        """A new DB-API connection in autocommit mode (transactions are explicit)."""
        raise NotImplementedError

    def sql(self, sql: str) -> str:
        """``sql`` with this database's placeholders (written with ``?``)."""
        return sql

    def fenced_journal(self, statuses: int, *, exclusive: bool) -> str:
        """An INSERT of a journal entry (7 values) that inserts nothing unless the run (id,
        epoch, then ``statuses`` statuses) is at the fence, locking the run row (``exclusive``:
        for update, as the transaction updates it) where the database has row locks."""
        raise NotImplementedError

    def checked(self, sql: str, check: int) -> str:
        """``sql`` (an INSERT or UPDATE changing at most one row) as the database runs a
        checked statement of it (unchanged where `write` checks the row count)."""
        return sql

    def write(self, conn: Any, statements: Sequence[Statement]) -> None:
        """Run ``statements`` as one transaction; raise `FenceLost` or `Rejected` (nothing
        committed) when a checked statement changed no row."""
        raise NotImplementedError

    def unique_table(self, exc: BaseException) -> str | None:
        """The table whose unique key ``exc`` violated, or None when it is no such error."""
        raise NotImplementedError

    def decode_json(self, value: Any) -> Any:
        """A JSON column's value as read, decoded."""
        return value

    def status_notice(self, run_id: str) -> Statement | None:
        """A statement that tells listeners the run's status changed (when its transaction
        commits), or None where the database has no notices."""
        return None

    def listener(self) -> Any:
        """A listener for those notices (see `guardrail.store.Listener`), or None."""
        return None

    def tables(self, conn: Any, names: Sequence[str]) -> set[str]:
        """Which of the tables ``names`` exist (in the schema the store uses)."""
        raise NotImplementedError
