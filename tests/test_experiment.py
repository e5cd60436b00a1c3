"""The security-overhead experiment: which CVMs are comparable, and the real CLI over demo hosts (its statistics and
report on generated data: tests/test_overhead_stats.py)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hostctl.client.site import HostEntry, Site
from hostctl.errors import HostctlError
from hostctl.experiments.security_overhead import choose, choose_all, service_for
from hostctl.load.generators import Targets
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


def test_a_script_no_cvm_serves_is_left_out_unless_none_is_served() -> None:
    snaps = {"h": snapshot("h", ("snp", S.SEV_SNP, 1, RUN), ("plain", S.NONE, 1, RUN))}
    targets = Targets(Site(hosts=[HostEntry(name="h", socket="/h")]), {"h": snaps["h"].services})
    chosen, notes = choose_all(snaps, targets, ("compose-post", "mixed", "home-timeline"))
    assert list(chosen) == ["mixed", "home-timeline"] and [c.target.cvm for c in chosen["mixed"]] == ["plain", "snp"]
    assert notes[0] == "script compose-post left out: no running CVM serves 'compose-post'"
    assert len(notes) == 3  # SEV and SEV-ES left out, said once though two scripts use home-timeline
    with pytest.raises(HostctlError, match="no running CVM serves 'user-timeline'"):
        choose_all(snaps, targets, ("user-timeline", "compose-post"))


def test_service_follows_the_script() -> None:
    assert [service_for(s) for s in ("compose-post", "user-timeline", "mixed", None)] == [
        "compose-post",
        "user-timeline",
        "home-timeline",
        "home-timeline",
    ]


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
def test_experiment_on_demo_hosts_interleaves_rounds_and_orders_snp_sev_plain(demo_site: Path, tmp_path: Path) -> None:
    history = tmp_path / "runs.jsonl"
    proc = hostctl(
        "--site", str(demo_site), "experiment", "security-overhead",
        "--rounds", "2", "--duration", "1", "--script", "home-timeline", "--connections", "2,6", "--seed", "3",
        "--out", str(tmp_path / "out"), "--history", str(history),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "SEV-ES left out: no running CVM with 2 online vCPUs (mec-1/es has 1)" in proc.stdout
    steps = [line.split("] ", 1)[1] for line in proc.stderr.splitlines()]
    assert len(steps) == 2 * 2 * 3 + 1 and steps[-1] == "done"
    assert steps[0].startswith("round 1/2, home-timeline at ") and steps[0].endswith("(run 1/12)")
    [md] = (tmp_path / "out").glob("security-overhead-*.md")
    assert md.read_text() in proc.stdout and "2 rounds; in each, every security type runs once" in proc.stdout
    stem = md.stem
    runs = list(csv.DictReader(io.StringIO((md.parent / f"{stem}-runs.csv").read_text())))
    for r in ("1", "2"):  # every round holds every type once per connection count
        for c in ("2", "6"):
            assert sorted(x["security"] for x in runs if x["round"] == r and x["connections"] == c) == [
                "SEV", "SEV-SNP", "plain"
            ]  # fmt: skip
    assert all(int(x["requests"]) > 0 and x["errors"] == "0" and x["excluded"] == "" for x in runs)
    summary = list(csv.DictReader(io.StringIO(md.with_suffix(".csv").read_text())))
    p50 = {(r["security"], r["connections"]): float(r["median_ms"]) for r in summary if r["percentile"] == "50"}
    for c in ("2", "6"):
        assert p50["plain", c] < p50["SEV", c] < p50["SEV-SNP", c], p50  # the configured 1.0 < 1.3 < 1.7
    snp = [r for r in summary if r["security"] == "SEV-SNP"]
    assert all(float(r["low_ms"]) <= float(r["median_ms"]) <= float(r["high_ms"]) for r in snp)
    assert all(r["increase_pct"] and r["distinguishable"] in ("yes", "no") for r in snp)
    for figure in (f"{stem}.svg", f"{stem}-sweep.svg"):
        assert ET.parse(md.parent / figure).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(records) == 12 and {r["why"] for r in records} == {"experiment security-overhead"}
    assert {(r["cvm"], r["labels"]["security"]) for r in records} == {
        ("plain", "none"), ("sev", "sev"), ("snp", "sev-snp")
    }  # fmt: skip
    assert sorted({r["labels"]["round"] for r in records}) == ["1", "2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--connections", "9999"), "connections = 9999 is above the bound 512 ([load] max_connections"),
        (("--duration", "0"), "wrk duration_s = 0 must be a whole number >= 1"),
        (("--script", "../evil"), "script '../evil' is not a shipped script"),
        (("--load-host", "edge-9"), "unknown load generator 'edge-9' (known: none)"),
        (("--script", "compose-post"), "no running CVM serves 'compose-post' in the site inventory; nothing ran"),
        (("--rounds", "1"), "rounds = 1 must be a whole number from 2 to 1000"),
        (("--connections", "4,x"), "--connections 4,x: 'x' is not a whole number"),
        (("--connections", "1,0"), "wrk connections = 0 must be a whole number >= 1"),
    ],
)
def test_bad_experiment_requests(demo_site: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    refused(
        hostctl("--site", str(demo_site), "experiment", "security-overhead", "--out", str(tmp_path), *args), message
    )
    assert list(tmp_path.iterdir()) == []


def test_experiment_needs_a_site() -> None:
    refused(hostctl("experiment", "security-overhead"), "experiment runs over a site: pass --site FILE")
