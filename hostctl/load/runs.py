"""The history of wrk runs per service: one JSON line per complete, successful run, kept across restarts.

A record is appended with a single write of one whole line and fsynced, so a reader sees a run entirely or not
at all; a line torn by a crash is reported and skipped, and the next append starts on a fresh line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hostctl.errors import HostctlError
from hostctl.load.wrk import WrkResult
from hostctl.wire.model import Model


def default_path() -> Path:
    """`$XDG_STATE_HOME/dittotui/runs.jsonl` (usually `~/.local/state/dittotui/runs.jsonl`)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dittotui" / "runs.jsonl"


class RunRecord(Model):
    """One wrk run: its target service, where the load came from, what it did, when, and the result."""

    host: str
    cvm: str
    service: str
    url: str
    load_host: str
    script: str | None
    threads: int
    connections: int
    duration_s: int
    timeout_s: int
    started: float  # Unix time
    result: WrkResult
    why: str = ""  # e.g. "console", "experiment security-overhead"
    labels: dict[str, str] = msgspec.field(default_factory=dict)  # e.g. {"security": "sev-snp"}

    @property
    def key(self) -> str:
        """`host/cvm/service`, the key the console keeps results under."""
        return f"{self.host}/{self.cvm}/{self.service}"


@dataclass
class RunLogRead:
    """What a read found: the records in file order, and one problem line per line that was skipped."""

    records: list[RunRecord]
    problems: list[str]

    def of(self, key: str) -> list[RunRecord]:
        """The runs against service `key` (`host/cvm/service`), oldest first."""
        return [r for r in self.records if r.key == key]


class RunLog:
    """The run history file (created on first append)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()

    def append(self, record: RunRecord) -> None:
        """Add one run, whole or not at all; HostctlError when the file cannot take it."""
        line = (record.to_json() + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise HostctlError(f"run history {self.path}: cannot open: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # close a line torn by a crash, so it does not swallow this one
            written = os.write(fd, line)
            if written != len(line):
                os.ftruncate(fd, size)
                raise OSError(28, "short write (disk full?)")
            os.fsync(fd)
        except OSError as e:
            raise HostctlError(f"run history {self.path}: run not recorded: {e.strerror}") from None
        finally:
            os.close(fd)

    def read(self) -> RunLogRead:
        """Every sound record; a line that is not one is named in `problems` and skipped."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return RunLogRead([], [])
        except OSError as e:
            return RunLogRead([], [f"{self.path}: cannot read: {e.strerror}"])
        records, problems = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(RunRecord.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                problems.append(f"{self.path}:{number}: skipped, not a run record ({type(e).__name__})")
        return RunLogRead(records, problems)
