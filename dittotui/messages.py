"""What screens tell the app.

A screen gets what it needs in its constructor and answers with `dismiss(result)`, or, when it stays open or has
something to say on the way, by posting one of these to the app (`self.app.post_message`): posted to the app
itself rather than bubbled up through the screen, a message reaches the app even when the screen closes right after.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from textual.message import Message

from hostctl.client.ref import CVMRef
from hostctl.load.runs import RunRecord


class ScaleRequested(Message):
    """Wake (`step` > 0) or park `step` workers on each of `refs`, compare-and-set against the counts on screen."""

    def __init__(self, refs: Sequence[CVMRef], step: int) -> None:
        super().__init__()
        self.refs = refs
        self.step = step


class WrkRunRecorded(Message):
    """A wrk run finished and is in the run history: show its result next to its service."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__()
        self.record = record


class ExperimentSaved(Message):
    """The report of experiment `what` was saved as Markdown at `report` (its table next to it)."""

    def __init__(self, what: str, report: Path) -> None:
        super().__init__()
        self.what = what
        self.report = report
