"""Isolation: overlay roots, OCI runtime specs, crun/runc, systemd scopes. See docs/isolation.md.

Built: the spec as a pure function (spec.py, seccomp.py, users.py, environment.py), overlay root
filesystems (rootfs.py), the runtime driver with exit watching and log plumbing (runtime.py),
and the sd_notify receiver (notify.py).
"""
