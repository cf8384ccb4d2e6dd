"""The web review console (``guardrail serve``): the inbox of runs waiting for a person, each
run's timeline, and the decisions (resume, abort, resolve, approve, reject) in a browser.

Behind a token, with the reviewer's name recorded on every decision::

    from guardrail.web import create_app

    app = create_app(guard, token=os.environ["GUARDRAIL_TOKEN"])  # a Starlette app
"""

from guardrail.web.app import create_app

__all__ = ["create_app"]
