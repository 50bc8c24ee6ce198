"""The demo's live progress: a rich progress bar on a terminal, a plain line every two
seconds otherwise (a log file, CI, a test reading stderr).

The demo fails some workflows on purpose (``fleetctl.demo.build_workload``); the count
says how many of the failures were planned, so a user watching does not take them for a
fault.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from types import TracebackType
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

from fleetctl.console import console, is_terminal

PLAIN_EVERY_S = 2.0


class Progress:
    """Workflows ended so far out of ``total``; use it as a context manager."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()  # terminal event kinds
        self.intended = 0  # failures the demo planned
        self._last_line = float("-inf")
        self._bar: Bar | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        if is_terminal(self.stream):
            self._bar = Bar(  # fits 80 columns
                TextColumn(" "),
                BarColumn(bar_width=16),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeElapsedColumn(),
                console=console(self.stream),
            )
            self._task = self._bar.add_task("workflows", total=self.total, counts=self._counts())
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.update(final=True)
        if self._bar is not None:
            self._bar.stop()

    def ended(self, kind: str, *, intended_failure: bool = False) -> None:
        self.counts[kind] += 1
        if kind == "FAILED" and intended_failure:
            self.intended += 1
        self.update()

    def failed_text(self) -> str:
        failed = self.counts["FAILED"]
        if not failed:
            return "failed 0"
        if failed == self.intended:
            return f"failed {failed} (as intended)"
        return f"failed {failed} ({self.intended} intended)"

    def _counts(self) -> str:
        rate = sum(self.counts.values()) / max(1e-3, time.monotonic() - self.started)
        rejected = self.counts["REJECTED"]
        return (
            f"completed {self.counts['COMPLETED']}  {self.failed_text()}  "
            + (f"rejected {rejected}  " if rejected else "")
            + f"{rate:.1f} wf/s"
        )

    def update(self, final: bool = False) -> None:
        done = sum(self.counts.values())
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, counts=self._counts())
            return
        if final or time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            width = 30
            filled = int(width * done / self.total) if self.total else width
            bar = "#" * filled + "-" * (width - filled)
            print(
                f"  [{bar}] {done:>4}/{self.total}  {self._counts()}", file=self.stream, flush=True
            )
            self._last_line = time.monotonic()
