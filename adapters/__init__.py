"""Framework adapters, imported as ``guardrail.adapters.<framework>``.

Each adapter translates a framework's tool call into a guarded call and a halt into the
framework's own pause; the guard does the work.
"""
