"""guardrail: make AI agents safe to let loose on tools that change the world.

Every tool call is recorded before and after it runs; on failure the run halts, reversible
actions are undone newest first, and whatever could not be undone waits for a person, who
resumes or aborts the run. See README.md.
"""

from guardrail.audit import ActionLog, Verification, Witness
from guardrail.decisions import Decision
from guardrail.errors import (
    CallRefused,
    CallRejected,
    Conflict,
    GuardrailError,
    OwnershipLost,
    PolicyError,
    ResultNotReplayable,
    RunHalted,
    RunNotFound,
    RunStateError,
    StoreError,
    UnknownTool,
)
from guardrail.guard import Guard
from guardrail.inject import Injected
from guardrail.lifecycle import PlannedStep
from guardrail.policy import Approval, ErrorResult, Policy, Retry, Review, UndoTool
from guardrail.record import ResultWarning
from guardrail.run import Run, current_run
from guardrail.store import Action, Compensation, ReviewItem, RunRecord

__all__ = [
    "Action",
    "ActionLog",
    "Approval",
    "CallRefused",
    "CallRejected",
    "Compensation",
    "Conflict",
    "Decision",
    "ErrorResult",
    "Guard",
    "GuardrailError",
    "Injected",
    "OwnershipLost",
    "PlannedStep",
    "Policy",
    "PolicyError",
    "ResultNotReplayable",
    "ResultWarning",
    "Retry",
    "Review",
    "ReviewItem",
    "Run",
    "RunHalted",
    "RunNotFound",
    "RunRecord",
    "RunStateError",
    "StoreError",
    "UndoTool",
    "UnknownTool",
    "Verification",
    "Witness",
    "current_run",
]
__version__ = "0.1.0"
