"""quay imports only the rtnetlink part of pyroute2, and the rest still works for anyone else."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import quayd.net.links
loaded = sorted(m for m in sys.modules if m.startswith("pyroute2"))
print("ndb" if any(m.startswith("pyroute2.ndb") for m in loaded) else "light")
from pyroute2 import NetNS, IPRoute
import pyroute2.ndb.main
from pyroute2.iproute.linux import IPRoute as Linux
print(NetNS.__name__, IPRoute is Linux, "pyroute2.ndb.main" in sys.modules)
"""


def test_links_load_rtnetlink_only_and_the_package_completes_on_demand() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["light", "NetNS", "True", "True"], done.stderr
