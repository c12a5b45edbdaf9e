"""Isolation: overlay roots, OCI runtime specs, crun/runc, systemd scopes. See docs/isolation.md.

Built: the spec as a pure function (spec.py, seccomp.py, users.py, environment.py), overlay root
filesystems (rootfs.py) and the runtime driver with exit watching and log plumbing (runtime.py).
Not yet: the stop policy as one call, OOM reporting, the sd_notify proxy.
"""
