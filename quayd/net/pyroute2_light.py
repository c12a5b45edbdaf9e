"""pyroute2's ``IPRoute`` without the rest of pyroute2.

``import pyroute2`` (and any ``pyroute2.x`` import, which runs the package's ``__init__`` first)
loads every pyroute2 API: NDB, IPDB, conntrack, nl80211, plan9, sqlite3… about 6 MiB of resident
memory in an agent that only speaks rtnetlink (measured: 12.7 MiB for the whole package, 6.5 MiB
for ``pyroute2.iproute.linux``). So, before pyroute2 is first imported, the package is registered
without running its ``__init__``, and only the modules quay uses are imported beneath it.

Anyone else in the process can still ``from pyroute2 import NetNS``: a name the bare package
lacks (and that is not a submodule, which the import system loads by itself) runs the real
``__init__`` into the same module object, once, and answers from it (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

PACKAGE = "pyroute2"


def _register_bare_package() -> None:
    if PACKAGE in sys.modules:
        return  # already imported, whole or bare: nothing to save
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:
        return  # not installed: the import below raises the usual ImportError
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        if name.startswith("__") or importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            raise AttributeError(name)  # a submodule: the import system loads it on its own
        del package.__getattr__
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]
    sys.modules[PACKAGE] = package


_register_bare_package()

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
