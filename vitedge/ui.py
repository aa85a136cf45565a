"""Terminal output: one rich console on stderr, progress bars, and the global --quiet switch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

console = Console(stderr=True, highlight=False)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def info(message: str) -> None:
    if not _state["quiet"]:
        console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (silent with --quiet or when there is no terminal)."""
    if _state["quiet"]:
        yield from items
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total if total is not None else len(items))  # type: ignore[arg-type]
        for item in items:
            yield item
            progress.advance(task)


class Step:
    """A spinner for one long step that has no natural count (an export, a build)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._status = None

    def __enter__(self) -> "Step":
        if not _state["quiet"]:
            self._status = console.status(self.description)
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
