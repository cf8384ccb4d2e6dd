"""``python -m guardrail.cli``: the ``guardrail`` command without the console script."""

from guardrail.cli import app

app(prog_name="guardrail")
