"""The run history: whole records only, kept across restarts, torn or foreign lines reported and skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hostctl.errors import HostctlError
from hostctl.load import runs, wrk
from hostctl.load.runs import RunLog, RunRecord

CORPUS = Path(__file__).parent / "data" / "wrk"


def record(service: str = "home-timeline", started: float = 1_700_000_000.0) -> RunRecord:
    result = wrk.parse((CORPUS / "json-home-timeline.txt").read_text())  # a real wrk run's output
    return RunRecord(
        host="mec-1",
        cvm="social-snp",
        service=service,
        url="http://127.0.0.1:9/x",
        load_host="this machine",
        script="home-timeline",
        threads=2,
        connections=8,
        duration_s=2,
        timeout_s=2,
        started=started,
        result=result,
        labels={"security": "sev-snp"},
    )


def test_runs_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runs.jsonl"
    RunLog(path).append(record(started=1.0))
    RunLog(path).append(record("compose-post", started=2.0))
    history = RunLog(path).read()  # a new process reads what the old ones wrote
    assert history.problems == []
    assert history.records == [record(started=1.0), record("compose-post", started=2.0)]
    assert [r.started for r in history.of("mec-1/social-snp/home-timeline")] == [1.0]
    assert history.records[0].result.p(99.99) == pytest.approx(23.363)


def test_a_corrupt_line_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.jsonl")
    log.append(record(started=1.0))
    with log.path.open("a") as f:
        f.write('{"host": "mec-1", "cvm": "x"}\n[1, 2]\nnot json at all\n')
    log.append(record(started=2.0))
    history = log.read()
    assert [r.started for r in history.records] == [1.0, 2.0]
    assert [p.split(":")[-2] for p in history.problems] == ["2", "3", "4"]
    assert all("skipped, not a run record" in p for p in history.problems)


def test_a_line_torn_by_a_crash_does_not_swallow_the_next_run(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs.jsonl")
    log.append(record(started=1.0))
    whole = log.path.read_bytes()
    log.path.write_bytes(whole + whole[: len(whole) // 2])  # a crash in the middle of a second append
    log.append(record(started=3.0))
    history = log.read()
    assert [r.started for r in history.records] == [1.0, 3.0] and len(history.problems) == 1
    assert log.path.read_bytes().endswith(b"\n") and json.loads(log.path.read_text().splitlines()[-1])


def test_missing_history_is_empty(tmp_path: Path) -> None:
    history = RunLog(tmp_path / "none.jsonl").read()
    assert history.records == [] and history.problems == []


def test_unwritable_history_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HostctlError, match=r"run history .*file/runs\.jsonl: cannot open"):
        RunLog(blocker / "runs.jsonl").append(record())


def test_default_path_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert runs.default_path() == tmp_path / "dittotui" / "runs.jsonl"
    RunLog().append(record())
    assert RunLog().read().records == [record()]
    assert oct(os.stat(runs.default_path()).st_mode & 0o777) == "0o640"
