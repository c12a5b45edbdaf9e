"""Reconciliation: plan(desired, observed, now) -> actions, and the executor.

Not built yet (issue 6)."""
