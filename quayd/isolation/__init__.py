"""Isolation: overlay roots, OCI runtime bundles, crun/runc, systemd scopes.

Not built yet (issue 4)."""
