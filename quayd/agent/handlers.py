"""The API's handlers: each request's parameters read, the agent asked through
:class:`~quayd.agent.control.Control`, the answer shaped as docs/api.md says. Nothing here
decides or keeps anything: a handler is a thin translation between HTTP's JSON and the agent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from quayd.agent import adhoc as adhoc_request
from quayd.agent.api import Handler, RequestError
from quayd.agent.control import Control, RunRequest, UnitView
from quayd.agent.status_json import action_json, exit_json
from quayd.units.fieldtypes import UNIT_NAME
from quayd.units.findings import QuayConfigError
from quayd.units.model import Unit

READ_ONLY = frozenset({"status", "plan", "show", "events"})
"""The handlers members of the group ``quay`` may call (the API's access check)."""
DEFAULT_EXEC_TIMEOUT = 60.0


class Handlers:
    """The handlers of one agent, by the API's route names."""

    def __init__(self, control: Control) -> None:
        self._control = control

    def table(self) -> dict[str, Handler]:
        return {
            "status": self.status,
            "plan": self.plan,
            "plan_dir": self.plan_dir,
            "show": self.show,
            "events": self.events,
            "start": self.start,
            "stop": self.stop,
            "restart": self.restart,
            "exec": self.exec,
            "reload": self.reload,
            "run": self.run,
            "remove": self.remove,
            "kill": self.kill,
            "image_pull": self.image_pull,
            "update": self.update,
        }

    def _known(self, params: Mapping[str, Any]) -> UnitView:
        name = str(params.get("name", ""))
        view = self._control.unit(name)
        if view is None:
            raise RequestError("not-found", f"no unit {name!r} (quayctl status lists them)")
        return view

    # --- reading ------------------------------------------------------------------------------

    async def status(self, params: Mapping[str, Any]) -> Any:
        del params
        info = self._control.info()
        return {
            "agent": {
                "pid": info.pid,
                "version": info.version,
                "started_at": info.started_at,
                "config_dir": info.config_dir,
                "passes": info.passes,
                "last_pass_at": info.last_pass_at,
            },
            "units": [unit_json(view) for view in self._control.units()],
        }

    async def show(self, params: Mapping[str, Any]) -> Any:
        view = self._known(params)
        container = None
        current = None
        if view.running:
            container = {
                "id": view.name,
                "pid": view.pid,
                "scope": f"quay-{view.name}.scope",
                "started_at": view.started_at,
                "ready_at": view.ready_at,
            }
            found = await self._control.usage(view.name)
            if found is not None:
                current = {
                    "memory_bytes": found.memory_bytes,
                    "cpu_seconds": found.cpu_seconds,
                    "pids": found.pids,
                }
        unit = view.unit
        resources = unit.resources if unit is not None else None
        return {
            **unit_json(view),
            "unit": unit.model_dump(mode="json", exclude_none=True) if unit else None,
            "container": container,
            "limits": {
                "memory": resources.memory if resources else None,
                "cpus": resources.cpus if resources else None,
                "pids": resources.pids if resources else None,
            },
            "usage": current,
            "health": None
            if not view.health_history
            else {
                "state": view.health,
                "failures": view.health_failures,
                "history": [{"at": at, "passed": ok} for at, ok in view.health_history],
            },
            "exits": [exit_json(exit_) for exit_ in view.exits],
        }

    async def events(self, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Checked before the stream starts, so a bad ``since`` is a 400, not a broken stream."""
        since = params.get("since") or 0
        if not isinstance(since, int) or since < 0:
            raise RequestError("bad-request", "since must be an event number (0 or more)")
        follow = params.get("follow") in (True, "true", "1", 1)
        log = self._control.events

        async def stream() -> AsyncIterator[dict[str, Any]]:
            async for event in log.follow(since, follow=follow):
                yield event.to_json()

        return stream()

    async def plan(self, params: Mapping[str, Any]) -> Any:
        del params
        actions, wake_at = self._control.planned()
        return {"actions": [action_json(action) for action in actions], "wake_at": wake_at}

    async def plan_dir(self, params: Mapping[str, Any]) -> Any:
        """A dry run: what the agent would do if ``config_dir`` were its config directory
        (Ansible: render into a staging directory, ask, then move it into place)."""
        directory = params.get("config_dir")
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise RequestError("bad-request", "config_dir must be an absolute path")
        try:
            preview = await self._control.preview(Path(directory))
        except QuayConfigError as error:
            raise RequestError("bad-request", str(error)) from error
        return {
            "config_dir": directory,
            "actions": [action_json(action) for action in preview.plan.actions],
            "statuses": {
                name: {"state": status.state, "detail": status.detail}
                for name, status in preview.plan.statuses.items()
            },
            "findings": list(preview.findings),
        }

    # --- steering -----------------------------------------------------------------------------

    async def stop(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params).name
        await self._control.hold(name, held=True, message="stopped by an operator (quayctl stop)")
        await self._control.next_pass()
        return {"unit": name, "held": True, "message": f"{name} is stopped until quayctl start"}

    async def start(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params).name
        await self._control.hold(name, held=False, message="started by an operator (quayctl start)")
        await self._control.next_pass()
        return {"unit": name, "held": False, "message": f"{name} starts as its unit says"}

    async def restart(self, params: Mapping[str, Any]) -> Any:
        """Stop and start again now: no backoff, the hold (if any) lifted."""
        name = self._known(params).name
        await self._control.restart(name)
        return {"unit": name, "message": f"{name} is restarting"}

    async def reload(self, params: Mapping[str, Any]) -> Any:
        del params
        return {"passes": await self._control.next_pass()}

    async def exec(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params).name
        argv = params.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise RequestError("bad-request", "argv must be a non-empty list of strings")
        timeout = float(params.get("timeout") or DEFAULT_EXEC_TIMEOUT)
        done = await self._control.exec(name, argv, timeout)
        return {"code": done.code, "stdout": done.stdout, "stderr": done.stderr}

    async def kill(self, params: Mapping[str, Any]) -> Any:
        """Send a signal to the unit's container process (``quayctl run`` forwards its own)."""
        name = self._known(params).name
        signal_name = adhoc_request.signal_param(params)
        await self._control.signal(name, signal_name)
        return {"unit": name, "signal": signal_name}

    # --- ad-hoc units, images, updates --------------------------------------------------------

    async def run(self, params: Mapping[str, Any]) -> Any:
        """An ad-hoc unit: in memory only, restart policy "no", through the normal passes.
        Answers once its container started (or the unit failed to)."""
        document = adhoc_request.unit_document(params)
        image = params["image"]
        tty, rm = params.get("tty", False), params.get("rm", True)
        interactive, attach = params.get("interactive", False), params.get("attach", tty)
        if not all(isinstance(flag, bool) for flag in (tty, rm, interactive, attach)):
            raise RequestError("bad-request", "tty, rm, interactive and attach are true or false")
        size = _console_size(params.get("console_size"))
        name = params.get("name") or None
        if name is not None and (not isinstance(name, str) or not UNIT_NAME.fullmatch(name)):
            raise RequestError("bad-request", f"{name!r} is not a unit name")
        try:
            unit = Unit.model_validate(document)
        except ValueError as error:
            raise RequestError("bad-request", f"cannot run {image}: {error}") from None
        request = RunRequest(name=name, unit=unit, tty=tty, rm=rm, interactive=interactive,
                             attach=attach, console_size=size)  # fmt: skip
        started, pid = await self._control.run_adhoc(request)
        return {"unit": started, "pid": pid, "tty": tty}

    async def remove(self, params: Mapping[str, Any]) -> Any:
        name = self._known(params).name
        await self._control.remove(name)
        return {"unit": name, "message": f"{name} is being removed"}

    async def image_pull(self, params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """An operator's pull (quayctl image pull): progress lines, then the image."""
        return await self._control.pull_image(params)

    async def update(self, params: Mapping[str, Any]) -> Any:
        """``quayctl update [--dry-run] [NAME...]``."""
        return await self._control.update(params)


def unit_json(view: UnitView) -> dict[str, Any]:
    """A unit's line of ``quayctl status`` (docs/api.md: GET /v1/status)."""
    unit = view.unit
    return {
        "health": view.health,
        "ip": view.ip,
        "ports": [str(spec) for spec in unit.network.ports] if unit is not None else [],
        "digest": view.digest,
        "last_exit": exit_json(view.exits[-1]) if view.exits else None,
        "held": view.held,
        "name": view.name,
        "state": view.state,
        "ready": view.ready,
        "detail": view.detail,
        "pid": view.pid,
        "started_at": view.started_at,
        "restarts": view.restarts,
        "next_attempt": view.next_attempt,
        "image": view.image,
        "findings": list(view.findings),
        "status_text": view.status_text,
    }


def _console_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in value)
    ):
        return (value[0], value[1])
    raise RequestError("bad-request", "console_size must be [rows, columns]")
