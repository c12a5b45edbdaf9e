"""The power-cut campaign (issue 19, item 2): the crash campaign's units and rounds in the booted
guest, with the plug pulled (qemu killed) instead of the agent.

The guest's disk is ``cache=writethrough`` (tests/support/vm_host.py): what the guest had not
flushed is lost, as on a real power cut. After each boot quayd starts on its own (enabled);
the campaign then restarts the registry (a transient unit), compares the config directory with
what it wrote (a unit write the cut caught before its data reached the disk is the operator's
loss, not quay's: it is written again, as Ansible would, and noted), runs
``quayctl image verify`` (a failure is a finding: no half-written blob, layer or record may be
used), and waits for every unit to run. No container survives a cut, so nothing is counted as
restarted; the puller may run the version it ran or the last one pushed.
"""

from __future__ import annotations

import random
import time

from tests.faults.crashes import ADOPTION, Campaign, Registry, Round
from tests.support.agent import Deployment
from tests.support.vm_host import VmHost


class PowerCuts(Campaign):
    FAULT = "power cut"
    SURVIVORS = False

    def __init__(self, deployment: Deployment, registry: Registry) -> None:
        super().__init__(deployment, registry)
        self.running_version = 0
        self.notes: list[str] = []
        self.unverified: list[str] = []

    def push_puller(self) -> None:
        super().push_puller()
        # the image is in the registry before the round (a registry elsewhere, in the field)
        self.host.run(["sync"])

    def round(self, rng: random.Random) -> Round:
        self.notes, self.unverified = [], []
        found = super().round(rng)
        found.notes += self.notes
        found.unverified += self.unverified
        aborted = self.watchdog_aborts()
        if aborted:
            found.notes.append(f"quayd was aborted by its watchdog {aborted} times in that boot")
        self.running_version = self.puller_version() or 0
        return found

    def fault(self, action: str, rng: random.Random) -> float:
        host = self.host
        assert isinstance(host, VmHost)
        if action == ADOPTION:
            host.systemctl("restart", "--no-block", "quayd")
            time.sleep(rng.uniform(0.0, 1.0))
        cut = time.monotonic()
        host.power_cut()
        host.boot()
        self.registry.start()
        self.rewrite_lost_writes()
        self.verify()
        self.accepted = {self.running_version, self.version}
        return time.monotonic() - cut

    def watchdog_aborts(self) -> int:
        """How often systemd's watchdog aborted quayd since the boot (the tests' is 3 s)."""
        journal = self.host.run(["journalctl", "-b", "-u", "quayd", "-o", "cat"], check=False)
        return journal.stdout.count("Watchdog timeout")

    def rewrite_lost_writes(self) -> None:
        on_disk = self.deployment.config_files()
        for name, text in sorted(self.units.items()):
            if on_disk.get(f"{name}.toml") != text:
                self.notes.append(f"the cut lost the write of {name}.toml: written again")
                self.deployment.write(name, text)
        for path in sorted(set(on_disk) - {f"{name}.toml" for name in self.units}):
            if path.startswith("."):  # our write's temporary file (quay ignores dot files)
                self.notes.append(f"the cut left {path}, a write's temporary file: removed")
            else:
                self.notes.append(f"the cut lost the deletion of {path}: deleted again")
            self.host.run(["rm", "-f", str(self.deployment.config_dir / path)])
        self.host.run(["sync"])

    def verify(self) -> None:
        state = str(self.deployment.state_dir)
        argv = [self.deployment.quayctl, "--state-dir", state, "image", "verify"]
        done = self.host.run(argv, check=False, timeout=300)
        if done.returncode != 0:
            self.unverified.append((done.stdout + done.stderr).strip()[-500:])
