"""The fault campaign in quick mode (`bench/faults.py`, two of each kind on two hosts): every fault is injected and
seen by the console's link, every scale request issued through the console is accounted for against the audit logs
on disk, and nothing is lost, applied twice or crashed. The timing targets are the benchmark's, not asserted here."""

from __future__ import annotations

from pathlib import Path

from bench.faults import KINDS, campaign, measure, parser, report, tally, tracebacks


async def test_a_quick_campaign_accounts_for_every_fault_and_request(tmp_path: Path) -> None:
    args = parser().parse_args(["--hosts", "2", "--per-kind", "2", "--seed", "7"])
    c = await campaign(args, tmp_path, progress=lambda _line: None)
    measure(c)
    t = tally(c)

    assert sorted(f.kind for f in c.faults) == sorted(KINDS * 2)
    assert {f.host for f in c.faults} == {"mec-1", "mec-2"}
    assert all(f.stale_s is not None for f in c.faults), "a fault the console's link never noticed"
    assert all(f.fresh_s is not None for f in c.faults), "a host that did not come back"
    assert c.requests and all(r.outcome != "pending" for r in c.requests)
    assert t.outcomes.get("applied", 0) > 0
    applied = {e["why"] for entries in c.audit.values() for e in entries if e["ok"] and e["before"] != e["after"]}
    assert {r.token for r in c.requests if r.outcome == "applied"} <= applied
    assert (t.lost, t.doubled, t.strays) == ([], [], 0)
    assert (c.bench_errors, c.app_exception) == ([], "")
    assert tracebacks(tmp_path / "console.log") == 0
    assert all(tracebacks(tmp_path / f"{name}.agent.log") == 0 for name in c.audit)
    text = report(c, t, "python -m bench.faults --hosts 2 --per-kind 2 --seed 7")
    assert all(f"| {kind} | 2 |" in text for kind in KINDS)
