"""Operators' restarts persisted until carried out (an agent crash in between loses none)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from quayd.agent.restart_requests import RestartRequests
from quayd.reconcile.model import Container


def container(started_at: float) -> Container:
    return Container(name="web", hash="h1", started_at=started_at, ready=True)


def test_a_request_is_on_disk_before_anything_is_done_and_the_next_agent_reads_it(
    tmp_path: Path,
) -> None:
    requests = RestartRequests(tmp_path)
    asyncio.run(requests.request("web", 1790000000.125))
    document = json.loads((tmp_path / "restarts.json").read_text())
    assert document == {"version": 1, "restarts": {"web": 1790000000.125}}
    after_a_crash = RestartRequests(tmp_path)
    after_a_crash.load()
    assert after_a_crash.pending() == {"web": 1790000000.125}


def test_a_request_goes_once_its_container_was_replaced_or_is_gone(tmp_path: Path) -> None:
    requests = RestartRequests(tmp_path)
    asyncio.run(requests.request("web", 100.0))
    asyncio.run(requests.request("db", 50.0))
    asyncio.run(requests.settle({"web": container(100.0)}))  # db runs nothing: done
    assert requests.pending() == {"web": 100.0}
    asyncio.run(requests.settle({"web": container(130.0)}))  # a new web: done
    assert requests.pending() == {}
    reloaded = RestartRequests(tmp_path)
    reloaded.load()
    assert reloaded.pending() == {}


def test_an_unreadable_file_holds_no_request(tmp_path: Path) -> None:
    (tmp_path / "restarts.json").write_text("{not json")
    requests = RestartRequests(tmp_path)
    requests.load()
    assert requests.pending() == {}
