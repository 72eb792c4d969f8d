"""The rich progress bar of ``fastgw loadtest`` (on stderr): connecting, then running."""

from __future__ import annotations

import sys
from typing import Any

from fastgw.loadtest.controller import NullProgress

__all__ = ["RichProgress", "make_progress"]


class RichProgress(NullProgress):
    """Two bars: clients connected (with failures), then the scenario's seconds."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                            transient=False, refresh_per_second=4)
        self.bar.start()
        self.connect_task: Any = None
        self.run_task: Any = None
        self.total = 0

    def connecting(self, total: int) -> None:
        self.total = total
        self.connect_task = self.bar.add_task("connecting", total=total, info="")

    def connect_update(self, ok: int, failed: int) -> None:
        if self.connect_task is not None:
            self.bar.update(self.connect_task, completed=ok + failed, info=f"ok {ok:,}  failed {failed:,}")

    def running(self, label: str, seconds: float) -> None:
        if self.run_task is not None:
            self.bar.update(self.run_task, visible=True)
            self.bar.stop_task(self.run_task)
        self.run_task = self.bar.add_task(label, total=max(1, round(seconds)), info="")

    def run_update(self, elapsed: float, info: str) -> None:
        if self.run_task is not None:
            self.bar.update(self.run_task, completed=round(elapsed), info=info)

    def note(self, text: str) -> None:
        self.console.print(text)

    def close(self) -> None:
        self.bar.stop()


def make_progress(enabled: bool) -> NullProgress:
    """A rich progress bar on stderr when ``enabled`` and stderr is a terminal; otherwise nothing."""
    if enabled and sys.stderr.isatty():
        return RichProgress()
    return NullProgress()
