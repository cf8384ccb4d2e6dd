"""Ready-made policy packs for real toolkits, imported as ``guardrail.policies``."""
