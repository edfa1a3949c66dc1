"""Progress reporting without printing: library code calls a `Progress`, the CLI renders it with rich."""
from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    """What long-running library functions report to; the CLI passes a rich implementation."""

    def start(self, description: str, total: int | None = None) -> None:
        """A new phase begins (``total`` units, or unknown)."""

    def advance(self, n: int = 1, **info: Any) -> None:
        """``n`` more units are done; ``info`` carries live figures (loss, images/s, failed)."""

    def finish(self) -> None:
        """The current phase ended."""


class NullProgress:
    """The default: report nowhere."""

    def start(self, description: str, total: int | None = None) -> None:
        return None

    def advance(self, n: int = 1, **info: Any) -> None:
        return None

    def finish(self) -> None:
        return None


class RecordingProgress:
    """Keeps every event; tests use it to check what a job reported."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, description: str, total: int | None = None) -> None:
        self.events.append(("start", (description, total)))

    def advance(self, n: int = 1, **info: Any) -> None:
        self.events.append(("advance", (n, info)))

    def finish(self) -> None:
        self.events.append(("finish", None))

    @property
    def advanced(self) -> int:
        """Units reported done over all phases."""
        return sum(e[1][0] for e in self.events if e[0] == "advance")


def ensure(progress: Progress | None) -> Progress:
    """``progress``, or a `NullProgress` when the caller passed none (so callees never test for None)."""
    return progress if progress is not None else NullProgress()
