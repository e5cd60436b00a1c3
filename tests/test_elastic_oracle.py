"""The calibration and its oracle on hand-made cells: the need per rate (interpolated and rounded up, never less for
more load, max beyond what was measured), the oracle of a trace, and the calibration file read back or refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostctl.errors import ConfigError
from hostctl.experiments.elastic_oracle import Calibration, Cell, Oracle, load
from hostctl.load.trace import Phase, Trace


def cell(rps: float, vcpus: int, p99: float, errors: int = 0, concurrency: float | None = None) -> Cell:
    return Cell(rps, vcpus, 5.0, int(rps * 5), errors, p99 / 2, p99, concurrency)


CALIBRATION = Calibration(
    "h/svc",
    boot=1,
    max=9,
    slo_ms=50,
    cells=[
        cell(60, 1, 20, concurrency=0.4),
        cell(120, 1, 90),
        cell(120, 2, 30, concurrency=0.8),
        cell(240, 2, 400),
        cell(240, 3, 70),
        cell(240, 4, 20, concurrency=1.7),
        cell(300, 3, 45),  # a lucky cell: fewer vCPUs than a lower rate needed
    ],
)


def test_the_need_per_rate() -> None:
    need = CALIBRATION.need
    assert need(60) == (1, False) and need(120) == (2, False) and need(240) == (4, False)
    assert need(10) == (1, False)  # below the lowest rate: the lowest's need
    assert need(90) == (2, False)  # 1 + (2 - 1) x 0.5 = 1.5, rounded up
    assert need(150) == (3, False)  # 2 + 2 x 0.25 = 2.5 -> 3
    assert need(300) == (4, False)  # the lucky 3 at 300 never goes below 240's 4
    assert need(301) == (9, True)  # above every measured rate: max, said so
    failing = Calibration("h/svc", 1, 9, 50, [cell(60, 1, 20), cell(120, 9, 80), cell(240, 9, 20)])
    assert failing.need(120) == (9, True) and failing.need(240) == (9, True)  # max could not serve 120
    assert failing.need(100) == (9, True)  # between a served rate and one max could not serve


def test_capacity_is_the_most_in_flight_within_the_slo_per_count() -> None:
    assert CALIBRATION.capacity() == [0.4, 0.8, None, 1.7, None, None, None, None, None]


def test_the_oracle_of_a_trace() -> None:
    trace = Trace((Phase("quiet", 2, 60), Phase("step", 2, 240), Phase("ramp", 2, 60, until_rps=120)), "t")
    oracle = Oracle(trace, CALIBRATION)
    # each second takes its highest rate: the ramp's first second peaks near 90 (-> 2), its second near 120 (-> 2)
    assert oracle.need == (1, 1, 4, 4, 2, 2)
    assert oracle.worker_seconds == 0 + 0 + 3 + 3 + 1 + 1 and oracle.seconds_beyond == 0
    assert oracle.rises() == [(2.0, 4.0, 4)]
    assert oracle.at(2.5) == 4 and oracle.at(99) == 2
    hot = Oracle(Trace((Phase("a", 1.5, 60), Phase("b", 1, 500)), "hot"), CALIBRATION)
    assert hot.need == (1, 9, 9) and hot.seconds_beyond == 2  # the second second reaches 500 req/s at 1.5 s
    assert hot.worker_seconds == pytest.approx(0 + 8 + 8 * 0.5)  # the last second cut at the trace's end
    assert hot.rises() == [(1.5, 2.5, 9)]  # its second needs 9 from 1.5 s, when 500 req/s arrive
    assert Oracle(Trace((Phase("a", 2, 240),), "busy"), CALIBRATION).rises() == [(0.0, 2.0, 4)]  # above boot at 0


def test_a_calibration_is_saved_and_read_back(tmp_path: Path) -> None:
    js, csv = CALIBRATION.save(tmp_path, "cal")
    assert load(js) == CALIBRATION
    rows = csv.read_text().splitlines()
    assert rows[0] == "rps,vcpus,seconds,requests,errors,p50_ms,p99_ms,concurrency,within"
    assert rows[1] == "60,1,5,300,0,10.0,20.0,0.40,yes" and rows[2].endswith(",,no") and len(rows) == 8


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ('{"target": "h/svc", "boot": 1, "max": 9, "slo_ms": 50, "cells": []}', "cells: no cells measured"),
        ('{"target": "h/svc", "boot": 1, "max": 9, "slo_ms": 50}', "cells: no cells measured"),
        ('{"target": "h/svc", "boot": 1, "max": 9}', "slo_ms: required key is missing"),
        ('{"target": "h/svc", "boot": 2, "max": 1, "slo_ms": 50, "cells": [1]}', "cells[0]: expected a table"),
        ("[1, 2]", "top level: expected a table"),
    ],
)
def test_a_bad_calibration_file_is_one_line_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^" + str(path).replace(".", r"\.")) as e:
        load(path)
    assert problem in str(e.value) and "\n" not in str(e.value)
    good = json.loads(CALIBRATION.to_json())
    good["cells"][0]["vcpus"] = 12
    path.write_text(json.dumps(good))
    with pytest.raises(ConfigError, match=r"cells\[0\]\.vcpus: 12 is outside boot\.\.max"):
        load(path)
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "none.json")
