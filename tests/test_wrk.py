"""wrk's text summary is parsed in every unit, with its error lines; garbage is a clear error."""

from __future__ import annotations

import pytest

from hostctl import wrk
from hostctl.errors import HostctlError

SUMMARY = """Running 2s test @ http://127.0.0.1:8080/wrk2-api/home-timeline/read
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    38.52ms    3.10ms  52.00ms   80.00%
    Req/Sec   208.00     10.00   220.00     90.00%
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    1.50s
     99%    2.00m
  418 requests in 2.01s, 75.00KB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:    207.96
Transfer/sec:     37.31KB
"""


def test_parses_every_unit_and_error_line() -> None:
    result = wrk.parse(SUMMARY)
    assert result.percentiles == {"50": pytest.approx(0.85), "75": 1.2, "90": 1500.0, "99": 120_000.0}
    assert (result.requests, result.duration_s, result.rps) == (418, pytest.approx(2.01), 207.96)
    assert (result.connect_errors, result.read_errors, result.write_errors, result.timeouts, result.non_2xx) == (
        1, 2, 3, 4, 5)
    assert result.errors == 15 and result.p(99) == 120_000.0


def test_clean_run_has_no_errors() -> None:
    clean = "\n".join(line for line in SUMMARY.splitlines() if "errors" not in line and "Non-2xx" not in line)
    assert wrk.parse(clean).errors == 0


@pytest.mark.parametrize("garbage", ["", "unable to connect to 127.0.0.1:1 Connection refused", "\x00\xff"])
def test_garbage_is_a_clear_error(garbage: str) -> None:
    with pytest.raises(HostctlError, match="wrk output has no summary"):
        wrk.parse(garbage)


def test_argv_is_a_list_without_a_shell() -> None:
    args = wrk.argv("http://127.0.0.1:1/x", threads=2, connections=16, duration_s=3, timeout_s=1)
    assert args[0].endswith("wrk") and args[1:] == ["-t2", "-c16", "-d3s", "--timeout=1s", "--latency",
                                                     "http://127.0.0.1:1/x"]
