"""The security-overhead experiment: which CVMs are comparable, the table, and the real CLI over demo hosts."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostctl.client.site import HostEntry, Site
from hostctl.errors import HostctlError
from hostctl.experiments.security_overhead import Choice, Report, Row, choose, service_for
from hostctl.load.generators import Target, Targets
from hostctl.load.wrk import Params, WrkResult
from hostctl.wire.model import CVM, DomainState, Host, Service, Snapshot
from hostctl.wire.security import SecurityType
from tests.support import ROOT

S = SecurityType


def snapshot(host: str, *cvms: tuple[str, SecurityType, int, DomainState]) -> Snapshot:
    return Snapshot(
        host=Host(name=host, uri="test:///", cpus=16, memory_mib=65536),
        cvms=[CVM(name=n, uuid=n, state=state, security=sec, online_vcpus=v, max_vcpus=8) for n, sec, v, state in cvms],
        services=[Service(name="home-timeline", cvm=n, url=f"http://{host}.{n}/h") for n, *_ in cvms],
    )


RUN = DomainState.RUNNING


def test_choose_takes_the_vcpu_count_most_types_share() -> None:
    snaps = {
        "mec-1": snapshot("mec-1", ("snp", S.SEV_SNP, 2, RUN), ("sev", S.SEV, 2, RUN), ("plain", S.NONE, 2, RUN)),
        "mec-2": snapshot(
            "mec-2",
            ("es", S.SEV_ES, 1, RUN),
            ("plain1", S.NONE, 1, RUN),
            ("snp-off", S.SEV_SNP, 1, DomainState.SHUTOFF),
        ),
        "big": snapshot("big", ("snp4", S.SEV_SNP, 4, RUN)),
    }
    site = Site(hosts=[HostEntry(name=n, socket=f"/{n}") for n in snaps])
    chosen, notes = choose(snaps, Targets(site, {n: s.services for n, s in snaps.items()}), "home-timeline")
    assert [(c.security, c.target.host, c.target.cvm, c.vcpus) for c in chosen] == [
        (S.NONE, "mec-1", "plain", 2),
        (S.SEV, "mec-1", "sev", 2),
        (S.SEV_SNP, "mec-1", "snp", 2),
    ]
    assert notes == ["SEV-ES left out: no running CVM with 2 online vCPUs (mec-2/es has 1)"]


def test_choose_says_which_types_are_missing_and_refuses_an_empty_site() -> None:
    snaps = {"h": snapshot("h", ("snp", S.SEV_SNP, 1, RUN), ("plain", S.NONE, 1, RUN))}
    site = Site(hosts=[HostEntry(name="h", socket="/h")])
    targets = Targets(site, {"h": snaps["h"].services})
    chosen, notes = choose(snaps, targets, "home-timeline")
    assert [c.security for c in chosen] == [S.NONE, S.SEV_SNP]
    assert notes == [
        "SEV left out: no running CVM of this type serves 'home-timeline'",
        "SEV-ES left out: no running CVM of this type serves 'home-timeline'",
    ]
    with pytest.raises(HostctlError, match="no running CVM serves 'compose-post' in the site inventory"):
        choose(snaps, targets, "compose-post")


def test_service_follows_the_script() -> None:
    assert [service_for(s) for s in ("compose-post", "user-timeline", "mixed", None)] == [
        "compose-post",
        "user-timeline",
        "home-timeline",
        "home-timeline",
    ]


def result(p50: float, p90: float, p99: float) -> WrkResult:
    return WrkResult(requests=1000, duration_s=10.0, rps=100.0, percentiles={"50": p50, "90": p90, "99": p99})


def row(security: SecurityType, cvm: str, p50: float, p90: float, p99: float) -> Row:
    return Row(Choice(security, 2, Target("mec-1", cvm, "home-timeline", f"http://x/{cvm}")), result(p50, p90, p99))


def test_report_table_markdown_csv_and_files(tmp_path: Path) -> None:
    report = Report(
        Params(threads=2, connections=8, duration_s=10, script="home-timeline"),
        "this machine",
        "home-timeline",
        1_700_000_000.0,
        rows=[
            row(S.NONE, "plain", 10.0, 20.0, 40.0),
            row(S.SEV, "sev", 12.0, 24.0, 44.0),
            row(S.SEV_SNP, "snp", 14.5, 29.0, 58.0),
        ],
        notes=["SEV-ES left out: none"],
    )
    markdown = report.markdown()
    assert "`wrk -t2 -c8 -d10s --timeout 2s -s home-timeline` against service home-timeline" in markdown
    assert (
        "| SEV-SNP | mec-1/snp | 2 | 1000 | 100.0 | 0 | 14.50 | 29.00 | 58.00 | +45.0% | +45.0% | +45.0% |" in markdown
    )
    assert "| SEV | mec-1/sev | 2 | 1000 | 100.0 | 0 | 12.00 | 24.00 | 44.00 | +20.0% | +20.0% | +10.0% |" in markdown
    assert "- SEV-ES left out: none" in markdown
    table = list(csv.DictReader(io.StringIO(report.csv())))
    assert [(r["security"], r["p99 vs plain"], r["wrk"]) for r in table] == [
        ("plain", "+0.0%", "wrk -t2 -c8 -d10s --timeout 2s -s home-timeline"),
        ("SEV", "+10.0%", "wrk -t2 -c8 -d10s --timeout 2s -s home-timeline"),
        ("SEV-SNP", "+45.0%", "wrk -t2 -c8 -d10s --timeout 2s -s home-timeline"),
    ]
    md, table_path = report.save(tmp_path / "out")
    assert md.name.startswith("security-overhead-") and md.suffix == ".md" and table_path.stem == md.stem
    assert md.read_text() == markdown and table_path.read_text() == report.csv()
    without_plain = Report(report.params, "x", "home-timeline", 0.0, rows=report.rows[1:])
    assert without_plain.table()[1][-3:] == ["n/a", "n/a", "n/a"]


# --- the real CLI over demo hosts ----------------------------------------------------------------------

DEMO = """
sample_interval = 0.5
probe_rate = 1.0
[overhead]
none = 1.0
sev = 1.3
sev_es = 1.4
sev_snp = 1.7
[traffic]
base_rps = 0.0
peak_rps = 0.0
[[endpoints]]
name = "home-timeline"
path = "/wrk2-api/home-timeline/read"
service_ms = 4.0
[[hosts]]
name = "mec-1"
  [[hosts.cvms]]
  name = "snp"
  security = "sev-snp"
  boot_vcpus = 1
  max_vcpus = 4
  online_vcpus = 2
  [[hosts.cvms]]
  name = "sev"
  security = "sev"
  boot_vcpus = 1
  max_vcpus = 4
  online_vcpus = 2
  [[hosts.cvms]]
  name = "plain"
  security = "none"
  boot_vcpus = 1
  max_vcpus = 4
  online_vcpus = 2
  [[hosts.cvms]]
  name = "es"
  security = "sev-es"
  boot_vcpus = 1
  max_vcpus = 4
"""


def hostctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hostctl", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def refused(proc: subprocess.CompletedProcess[str], message: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("experiment")
    config, runtime = tmp / "demo.toml", tmp / "run"
    config.write_text(DEMO)
    up = hostctl("demo", "up", "--config", str(config), "--runtime", str(runtime))
    assert up.returncode == 0, up.stderr
    yield runtime / "site.toml"
    hostctl("demo", "down", "--runtime", str(runtime))


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_experiment_on_demo_hosts_orders_snp_sev_plain(demo_site: Path, tmp_path: Path) -> None:
    history = tmp_path / "runs.jsonl"
    proc = hostctl(
        "--site",
        str(demo_site),
        "experiment",
        "security-overhead",
        "--duration",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--history",
        str(history),
    )
    assert proc.returncode == 0, proc.stderr
    assert "SEV-ES left out: no running CVM with 2 online vCPUs (mec-1/es has 1)" in proc.stdout
    assert [line.split("] ", 1)[1] for line in proc.stderr.splitlines()] == [
        "plain: mec-1/plain/home-timeline (1/3)",
        "SEV: mec-1/sev/home-timeline (2/3)",
        "SEV-SNP: mec-1/snp/home-timeline (3/3)",
        "done",
    ]
    [md] = (tmp_path / "out").glob("security-overhead-*.md")
    rows = list(csv.DictReader(io.StringIO(md.with_suffix(".csv").read_text())))
    assert [r["security"] for r in rows] == ["plain", "SEV", "SEV-SNP"] and md.read_text() in proc.stdout
    p50 = [float(r["p50 ms"]) for r in rows]
    assert p50[0] < p50[1] < p50[2], rows  # the configured overheads: 1.0 < 1.3 < 1.7
    assert all(int(r["requests"]) > 0 and r["errors"] == "0" for r in rows)
    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["cvm"], r["labels"]["security"], r["why"]) for r in records] == [
        ("plain", "none", "experiment security-overhead"),
        ("sev", "sev", "experiment security-overhead"),
        ("snp", "sev-snp", "experiment security-overhead"),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--connections", "9999"), "connections = 9999 is above the bound 512 ([load] max_connections"),
        (("--duration", "0"), "wrk duration_s = 0 must be a whole number >= 1"),
        (("--script", "../evil"), "script '../evil' is not a shipped script"),
        (("--load-host", "edge-9"), "unknown load generator 'edge-9' (known: none)"),
        (("--script", "compose-post"), "no running CVM serves 'compose-post' in the site inventory; nothing ran"),
    ],
)
def test_bad_experiment_requests(demo_site: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    refused(
        hostctl("--site", str(demo_site), "experiment", "security-overhead", "--out", str(tmp_path), *args), message
    )
    assert list(tmp_path.iterdir()) == []


def test_experiment_needs_a_site() -> None:
    refused(hostctl("experiment", "security-overhead"), "experiment runs over a site: pass --site FILE")
