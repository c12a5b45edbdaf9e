"""Reading a manifest key by key, so that every key left unread is reported by its YAML path.

An importer takes the keys it maps; :meth:`Mapping.finish` reports every other key as
unmappable: an error, or with ``--lossy`` a warning. Nothing is ignored without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class KubeImportError(Exception):
    """A manifest that does not map onto a unit; each problem names its YAML path."""

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = problems
        lines = "\n".join(f"{origin}: {p}" for p in problems)
        super().__init__(
            f"{lines}\n{origin}: not imported, {len(problems)} problem(s); with --lossy, keys "
            "with no quay equivalent are left out, each named in a warning"
        )


@dataclass
class Context:
    origin: str
    lossy: bool
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def unmappable(self, path: str, message: str) -> None:
        """A key with no equivalent: an error, or with --lossy a warning (and it is dropped)."""
        if self.lossy:
            self.warnings.append(Problem(path, f"{message}: not imported"))
        else:
            self.errors.append(Problem(path, message))

    def note(self, path: str, message: str) -> None:
        """Something said about a key that did map, or that means nothing to quay."""
        self.warnings.append(Problem(path, message))

    def wrong(self, path: str, value: Any, expected: str) -> None:
        """A value Kubernetes itself would refuse: always an error."""
        self.errors.append(Problem(path, f"{value!r} is not {expected}"))


class Mapping:
    """A YAML mapping at ``path``; the keys taken from it are remembered."""

    def __init__(self, context: Context, data: dict[str, Any], path: str) -> None:
        self.context = context
        self.data = data
        self.path = path
        self.taken: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(self, key: str) -> Any:
        self.taken.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str) -> str | None:
        value = self.take(key)
        if value is None or isinstance(value, str):
            return value
        self.context.wrong(self.at(key), value, "a string")
        return None

    def integer(self, key: str) -> int | None:
        value = self.take(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.context.wrong(self.at(key), value, "a whole number")
        return None

    def boolean(self, key: str) -> bool | None:
        value = self.take(key)
        if value is None or isinstance(value, bool):
            return value
        self.context.wrong(self.at(key), value, "true or false")
        return None

    def strings(self, key: str) -> list[str] | None:
        value = self.take(key)
        if value is None:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        self.context.wrong(self.at(key), value, "a list of strings")
        return None

    def string_map(self, key: str) -> dict[str, str]:
        value = self.take(key)
        if value is None:
            return {}
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return {str(k): v for k, v in value.items()}
        self.context.wrong(self.at(key), value, "a map of strings")
        return {}

    def mapping(self, key: str) -> Mapping | None:
        value = self.take(key)
        if value is None:
            return None
        if isinstance(value, dict):
            return Mapping(self.context, value, self.at(key))
        self.context.wrong(self.at(key), value, "a mapping")
        return None

    def mappings(self, key: str) -> list[Mapping]:
        value = self.take(key)
        if value is None:
            return []
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return [Mapping(self.context, v, f"{self.at(key)}[{i}]") for i, v in enumerate(value)]
        self.context.wrong(self.at(key), value, "a list of mappings")
        return []

    def skip(self, *keys: str) -> None:
        """Keys that say nothing quay acts on (server-side state, information only)."""
        self.taken.update(keys)

    def finish(self, why: str = "no quay equivalent") -> None:
        for key in self.data:
            if key not in self.taken:
                self.context.unmappable(self.at(key), why)
