"""busybox as the container tests get it: pushed to a real registry, then pulled into a store."""

from __future__ import annotations

from pathlib import Path

from quayd.images.pull import pull
from quayd.images.registry import RegistryClient, RetryPolicy
from quayd.images.store import Store
from tests.support.images import PushTarget, busybox_image
from tests.support.registry import running_registry


def pulled_busybox_layers(state_dir: Path, work: Path) -> list[str]:
    """Push busybox to a ``docker-registry`` under ``work``, pull it into ``state_dir/images``
    (in this process: a systemd test host's own network cannot reach the registry), and give
    the image's layer directories, ready to be an overlay's lowerdirs."""
    with running_registry(work / "registry") as registry:
        image = busybox_image(work, PushTarget(registry.host))
        store = Store(state_dir / "images")
        retry = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)
        with RegistryClient(retry=retry) as client:
            record = pull(image.reference(registry.host), store=store, client=client)
    return [str(store.layer_path(layer.chain_id)) for layer in record.layers]
