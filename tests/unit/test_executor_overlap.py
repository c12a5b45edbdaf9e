"""The executor's create / network / start order, with a fake runtime and network: the process
never starts before its veth work is done, and a failure on either side leaves nothing."""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation import container
from quayd.isolation.container import Bundle
from quayd.net.network import Attachment
from quayd.reconcile.executor import Executor


class FakeRuntime:
    systemd_cgroup = False

    def __init__(self, *, fail_create: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_create = fail_create
        self.lock = threading.Lock()

    def note(self, call: str) -> None:
        with self.lock:
            self.calls.append(call)

    def create(self, container_id: str, bundle: Path, **_: Any) -> int:
        del container_id, bundle
        time.sleep(0.05)  # the runtime's create: a process, the GIL free
        if self.fail_create:
            self.note("create failed")
            raise RuntimeError("create failed")
        self.note("created")
        return 4242

    def start(self, container_id: str) -> None:
        self.note(f"started {container_id}")

    def state(self, container_id: str) -> None:
        del container_id  # no container before its create, none after a failed one

    def delete(self, container_id: str, *, force: bool = False) -> None:
        self.note(f"deleted {container_id}" + (" (forced)" if force else ""))


class FakeNetwork:
    def __init__(self, runtime: FakeRuntime, *, fail: bool = False) -> None:
        self.runtime = runtime
        self.fail = fail

    def connect(self, prepared: Attachment) -> Attachment:
        self.runtime.note("connect began")
        time.sleep(0.02)
        if self.fail:
            self.runtime.note("connect failed")
            raise OSError("veth failed")
        time.sleep(0.08)  # longer than the create: start must wait for it
        self.runtime.note("connected")
        return prepared


def _executor(runtime: FakeRuntime, network: FakeNetwork) -> Executor:
    executor = Executor.__new__(Executor)
    executor.runtime = runtime  # type: ignore[assignment]
    executor.network = network  # type: ignore[assignment]
    executor._net_pool = ThreadPoolExecutor(2)
    return executor


PREPARED = Attachment("web", Path("/run/quay/netns/web"), ipv4=None, ipv6=None, host_veth="qv-web")  # type: ignore[arg-type]
BUNDLE = Bundle("web", Path("/nonexistent/web"), "SIGTERM", 1.0, "systemd")


@pytest.fixture(autouse=True)
def _no_oom_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container, "watch_oom", lambda _pid: None)


def test_the_veth_work_overlaps_the_create_and_the_start_waits_for_it() -> None:
    runtime = FakeRuntime()
    executor = _executor(runtime, FakeNetwork(runtime))
    started = executor._create_join_start(
        BUNDLE, 1, functools.partial(executor.network.connect, PREPARED)
    )
    assert started.pid == 4242
    # the veth work began before the create ended, and the start came after both
    assert runtime.calls == ["connect began", "created", "connected", "started web"]


def test_a_failed_veth_deletes_the_created_container_and_never_starts_it() -> None:
    runtime = FakeRuntime()
    executor = _executor(runtime, FakeNetwork(runtime, fail=True))
    with pytest.raises(OSError, match="veth failed"):
        executor._create_join_start(
            BUNDLE, 1, functools.partial(executor.network.connect, PREPARED)
        )
    assert "started web" not in runtime.calls
    assert runtime.calls[-1] == "deleted web (forced)"


def test_a_failed_create_waits_for_the_veth_work_before_it_raises() -> None:
    runtime = FakeRuntime(fail_create=True)
    executor = _executor(runtime, FakeNetwork(runtime))
    with pytest.raises(RuntimeError, match="create failed"):
        executor._create_join_start(
            BUNDLE, 1, functools.partial(executor.network.connect, PREPARED)
        )
    assert runtime.calls[-1] == "connected"  # nothing of it still running
    assert "started web" not in runtime.calls
