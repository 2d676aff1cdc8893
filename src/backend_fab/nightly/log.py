"""What the batch tells its operator: a rich progress bar on a terminal, JSON lines otherwise.

Under cron or a scheduler stderr is not a TTY: every event is one JSON object per line (``ts``,
``level``, ``event`` and the event's fields), easy to grep and to ship to a log store. On a TTY the
same events drive a progress bar and short human lines. ``quiet`` keeps warnings and errors only.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    """Structured events for one batch run; ``progress(total)`` opens a bar (TTY only)."""

    def __init__(
        self,
        *,
        quiet: bool = False,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        progress: bool | None = None,
    ):
        """``quiet``: warnings and errors only; ``progress``: show the bar on a TTY (default:
        unless quiet), e.g. a quiet log with a bar for a caller that prints its own summary."""
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.min_level = LEVELS["warning"] if quiet else LEVELS["info"]
        self.quiet = quiet
        self.show_progress = (not quiet) if progress is None else progress
        self._progress = None
        self._task = None
        self._console = None
        self.counts: dict[str, int] = {}

    # --- events --------------------------------------------------------------------------------

    def event(
        self, event: str, level: str = "info", message: str | None = None, **fields: Any
    ) -> None:
        """Record ``event`` with ``fields``; ``message`` is the human line on a TTY."""
        self.counts[level] = self.counts.get(level, 0) + 1
        if LEVELS[level] < self.min_level:
            return
        if self.tty:
            text = message or event.replace("_", " ")
            style = {"warning": "yellow", "error": "bold red"}.get(level, "")
            console = self._rich_console()
            console.print(
                f"[{style}]{text}[/{style}]" if style else text, highlight=False, markup=bool(style)
            )
            return
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
        }
        if message:
            record["message"] = message
        record.update(fields)
        self.stream.write(json.dumps(record, default=str, sort_keys=False) + "\n")
        self.stream.flush()

    def info(self, event: str, message: str | None = None, **fields: Any) -> None:
        self.event(event, "info", message, **fields)

    def warning(self, event: str, message: str | None = None, **fields: Any) -> None:
        self.event(event, "warning", message, **fields)

    def error(self, event: str, message: str | None = None, **fields: Any) -> None:
        self.event(event, "error", message, **fields)

    # --- progress ------------------------------------------------------------------------------

    def _rich_console(self):
        if self._progress is not None:
            return self._progress.console
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True)
        return self._console

    def progress_start(self, total: int, description: str) -> None:
        if not self.tty or not self.show_progress or total <= 0:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._rich_console(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def progress_advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def progress_stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None
