"""Errors raised by guardrail.

The tree::

    BaseException
    ├── RunHalted                 the run stopped for review; the agent must not go on
    │   └── OwnershipLost         this worker lost the run (paused past its lease): stop
    └── Exception
        └── GuardrailError        everything else guardrail raises
            ├── PolicyError       a policy is missing, malformed or refuses a call
            │   └── UnknownTool   strict mode: a tool without a policy
            ├── CallRefused       a call was refused before it ran (too large, bad arguments)
            ├── CallRejected      a person rejected the call at its approval gate
            ├── RunNotFound       no run or review item with that id
            ├── RunStateError     the run is not in a state that allows this
            │   └── Conflict      another reviewer or worker decided first
            ├── ResultNotReplayable  a recorded result cannot be returned again
            └── StoreError        the database failed; nothing recorded was lost

Every error carries what it is about as attributes (``run_id``, ``tool``, ``field``) so code can
act on it without parsing messages.
"""

from __future__ import annotations


class GuardrailError(Exception):
    """Base of every error guardrail raises (except :class:`RunHalted`)."""

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        tool: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.tool = tool
        self.field = field


class PolicyError(GuardrailError):
    """A policy is missing, malformed, or names something that does not exist.

    From a policy file, ``file`` and (where the format tells) ``line`` say where.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        tool: str | None = None,
        field: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, tool=tool, field=field)
        self.file = file
        self.line = line


class UnknownTool(PolicyError):
    """Strict mode refused a tool that has no policy."""


class CallRefused(GuardrailError):
    """A call was refused before it ran; nothing happened and nothing was recorded."""


class CallRejected(GuardrailError):
    """A person rejected this call at its approval gate; the agent should take another way.

    Unlike :class:`RunHalted` this is an ordinary exception: frameworks show it to the model.
    """


class RunNotFound(GuardrailError):
    """No run (or review item) with that id exists in the store."""


class RunStateError(GuardrailError):
    """The run is not in a state that allows the operation."""

    def __init__(self, message: str, *, run_id: str | None = None, status: str | None = None):
        super().__init__(message, run_id=run_id)
        self.status = status


class Conflict(RunStateError):
    """Someone else decided first (two reviewers, two recovery workers); exactly one wins."""


class ResultNotReplayable(GuardrailError):
    """A deduplicated call's recorded result was not JSON and cannot be returned again."""


class StoreError(GuardrailError):
    """The store could not be reached or written. What was committed before is intact."""


class RunHalted(BaseException):
    """The run halted and awaits a person: stop the agent.

    Derives from ``BaseException`` so an agent's generic ``except Exception`` cannot swallow it.
    ``status`` is ``pending_review`` (after a failure) or ``awaiting_approval``; ``review_items``
    lists the ids of the items a person must look at.

    Example::

        try:
            with guard.run(agent="shop") as run:
                agent.invoke(...)
        except RunHalted as halt:
            print(f"run {halt.run_id} is {halt.status}: guardrail show {halt.run_id}")
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        status: str,
        tool: str | None = None,
        review_items: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.tool = tool
        self.review_items = review_items


class OwnershipLost(RunHalted):
    """This worker no longer owns the run: its lease expired and recovery took the run over, or
    a person resumed or aborted it, while this worker was paused or cut off from the store.

    Nothing more runs or is recorded for the run in this worker; whoever owns it now decides.
    A `RunHalted`, so the agent loop stops.
    """
