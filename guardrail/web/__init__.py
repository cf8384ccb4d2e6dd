"""The web review console (``guardrail serve``): the inbox of runs waiting for a person, each
run's timeline, and the decisions (resume, abort, resolve, approve, reject) in a browser.

Each decision records who logged in: a reviewer's own token (``guardrail reviewers add NAME``),
the shared token (as ``shared-token``), or a trusted proxy header, never a name typed in a form::

    from guardrail.web import create_app

    app = create_app(guard, reviewers="/etc/guardrail/reviewers.json")  # a Starlette app
"""

from guardrail.web.app import create_app

__all__ = ["create_app"]
