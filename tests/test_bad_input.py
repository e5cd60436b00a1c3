"""Bad input to the real `hostctl` and `dittotui` commands: one line naming the file, field and value, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

SITE = """
[defaults]
{defaults}
[[hosts]]
name = "mec-1"
socket = "/run/agent.sock"
[load]
{load}
"""

UTF16 = b"\xff\xfe" + '[[hosts]]\nname = "a"\n'.encode("utf-16-le")


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *map(str, argv)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def refused(proc: subprocess.CompletedProcess[str], prog: str, line: str) -> None:
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"{prog}: {line}\n")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (UTF16, "not UTF-8 text: it starts with bytes FF FE, a UTF-16 (little-endian) mark; save it as UTF-8"),
        (
            b'[[hosts]]\nname = "\xc3("\n',
            "not UTF-8 text: byte C3 at offset 18 (invalid continuation byte); save it as UTF-8",
        ),
    ],
)
def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(data)
    refused(run("hostctl", "--site", path, "status"), "hostctl", f"{path}: {problem}")
    refused(run("dittotui", "--site", path), "dittotui", f"{path}: {problem}")
    refused(run("dittotui", "--demo-config", path), "dittotui", f"{path}: {problem}")


@pytest.mark.parametrize(
    ("defaults", "load", "problem"),
    [
        (
            "",
            "max_connections = 100000000000000000000",
            "load.max_connections: 100000000000000000000 must be from 1 to 65536",
        ),
        ("", "max_threads = 5000", "load.max_threads: 5000 must be from 1 to 1024"),
        ("", "max_duration_s = 31536000", "load.max_duration_s: 31536000 must be from 1 to 86400"),
        ("", "max_timeout_s = 0", "load.max_timeout_s: 0 must be from 1 to 3600"),
        ("interval = 1e-9", "", "defaults.interval: 1e-09 must be from 0.05 to 3600"),
        ("timeout = inf", "", "defaults.timeout: inf must be from 0.1 to 3600"),
        ("scale_timeout = nan", "", "defaults.scale_timeout: nan must be from 0.1 to 3600"),
        ("keepalive = 1e300", "", "defaults.keepalive: 1e+300 must be from 0.1 to 3600"),
        ("backoff_max = -1", "", "defaults.backoff_max: -1.0 must be from 0.1 to 3600"),
        ("slo_p99_ms = 1e12", "", "defaults.slo_p99_ms: 1000000000000.0 must be from 0.01 to 600000"),
    ],
)
def test_absurd_numbers_in_a_site_file_name_file_field_and_value(
    tmp_path: Path, defaults: str, load: str, problem: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(defaults=defaults, load=load))
    refused(run("hostctl", "--site", path, "status"), "hostctl", f"{path}: {problem}")
    refused(run("dittotui", "--site", path), "dittotui", f"{path}: {problem}")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (("audit", "--limit", "100000000000000000000"), "--limit 100000000000000000000: must be from 1 to 100000"),
        (("scale", "h/c", "99999999"), "N 99999999: must be from 0 to 4096"),
        (("status", "--sample", "inf"), "--sample inf: must be from 0 to 60"),
        (("experiment", "elastic-vs-fixed", "--scale", "nan"), "--scale nan: must be from 0.01 to 100"),
        (("experiment", "elastic-vs-fixed", "--scale", "inf"), "--scale inf: must be from 0.01 to 100"),
        (("experiment", "elastic-vs-fixed", "--repeats", "0"), "--repeats 0: must be from 1 to 100"),
        (
            ("experiment", "elastic-vs-fixed", "--traces", "bursty,x"),
            "--traces: unknown trace 'x' (choose from bursty, diurnal)",
        ),
        (("experiment", "elastic-vs-fixed", "--calibration", "none.json"), "none.json: no such file"),
    ],
)
def test_absurd_options_are_refused_before_anything_is_reached(
    tmp_path: Path, argv: tuple[str, ...], line: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(defaults="", load=""))
    refused(run("hostctl", "--site", path, *argv), "hostctl", line)


def test_an_absurd_refresh_is_refused() -> None:
    refused(run("dittotui", "--refresh", "1e9"), "dittotui", "--refresh 1000000000.0: must be from 0.01 to 10 seconds")
