"""wrk: the shipped scripts run by real wrk against real HTTP services, the JSON summary agreeing with wrk's own
text, a corpus of outputs in every unit and with every error line, and runs that are cancelled or killed."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

import psutil
import pytest
from aiohttp import web

from hostctl.demo.services import CVMService
from hostctl.errors import HostctlError
from hostctl.load import wrk

CORPUS = Path(__file__).parent / "data" / "wrk"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


# --- the corpus ----------------------------------------------------------------------------------------


def test_corpus_is_fully_described() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in CORPUS.glob("*.txt"))


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if "error" not in e))
def test_corpus_parses(name: str) -> None:
    expected = dict(EXPECTED[name])
    result = wrk.parse((CORPUS / name).read_text())
    source = expected.pop("source")
    assert ("99.9" in result.percentiles) == (source == "json")  # the JSON line is preferred when sound
    for key, value in expected.items():
        actual = result.p(float(key[1:])) if key.startswith("p") else getattr(result, key)
        assert actual == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if "error" in e))
def test_corpus_garbage_is_a_clear_error(name: str) -> None:
    with pytest.raises(HostctlError, match="wrk output has no summary") as info:
        wrk.parse((CORPUS / name).read_bytes().decode(errors="replace"))
    assert EXPECTED[name]["error"] in str(info.value) and "\n" not in str(info.value)


# --- parameters and scripts ----------------------------------------------------------------------------


def test_whole_float_seconds_are_whole_seconds() -> None:
    assert wrk.Params(duration_s=5.0).args("s.lua", "http://x/")[2] == "-d5s"


def test_args_are_a_list_without_a_shell() -> None:
    params = wrk.Params(threads=2, connections=16, duration_s=3, timeout_s=1, script="mixed")
    assert params.args("/tmp/s.lua", "http://127.0.0.1:1/x") == [
        "-t2",
        "-c16",
        "-d3s",
        "--timeout=1s",
        "--latency",
        "-s",
        "/tmp/s.lua",
        "http://127.0.0.1:1/x",
    ]
    assert params.describe() == "wrk -t2 -c16 -d3s --timeout 1s -s mixed"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threads": 0}, "threads = 0 must be a whole number >= 1"),
        ({"duration_s": 1.5}, "duration_s = 1.5 must be a whole number >= 1"),
        ({"threads": 4, "connections": 2}, "connections = 2 must be >= threads = 4"),
        ({"script": "../../etc/passwd"}, "script '../../etc/passwd' is not a shipped script"),
    ],
)
def test_bad_params_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(HostctlError, match=message.replace(".", r"\.")):
        wrk.Params(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [*wrk.SCRIPTS, None])
def test_every_script_reports_json(name: str | None) -> None:
    text = wrk.script_text(name)
    assert "function done(summary, latency, requests)" in text and wrk.JSON_PREFIX.strip() in text


# --- real wrk ------------------------------------------------------------------------------------------


@pytest.fixture
async def service() -> AsyncIterator[CVMService]:
    svc = CVMService("cvm-test", overhead=1.2, slots=2, rng=random.Random(3))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.mark.parametrize("script", ["home-timeline", "mixed"])
async def test_json_agrees_with_wrks_own_text_of_the_same_run(service: CVMService, script: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "s.lua"
        lua.write_text(wrk.script_text(script))
        args = wrk.Params(threads=2, connections=6, duration_s=2, script=script).args(
            str(lua), service.urls()["home-timeline"]
        )
        proc = await asyncio.create_subprocess_exec("wrk", *args, stdout=asyncio.subprocess.PIPE)
        out = (await proc.communicate())[0].decode()
    text_only = "\n".join(line for line in out.splitlines() if not line.startswith(wrk.JSON_PREFIX))
    from_json, from_text = wrk.parse(out), wrk.parse(text_only)
    assert from_json.requests == from_text.requests > 100 and from_json.errors == from_text.errors == 0
    assert set(from_json.percentiles) == {"50", "75", "90", "99", "99.9", "99.99", "100"}
    assert set(from_text.percentiles) == {"50", "75", "90", "99"}
    for q in ("50", "75", "90", "99"):  # wrk prints two decimals in its unit
        assert from_json.percentiles[q] == pytest.approx(from_text.percentiles[q], abs=0.006), q
    assert from_json.mean_ms == pytest.approx(from_text.mean_ms, abs=0.006)
    assert from_json.max_ms == pytest.approx(from_text.max_ms, abs=0.006) == from_json.p(100)
    assert from_json.p(50) <= from_json.p(99) <= from_json.p(99.9) <= from_json.p(100)


async def test_mixed_script_splits_requests_60_30_10(service: CVMService) -> None:
    result = await wrk.run(service.urls()["home-timeline"], threads=2, connections=8, duration_s=2, script="mixed")
    counts = {name: s["requests"] for name, s in service.stats().items()}
    total = sum(counts.values())
    assert result.errors == 0 and total >= result.requests > 300
    shares = {name: n / total for name, n in counts.items()}
    assert shares["home-timeline"] == pytest.approx(0.6, abs=0.08)
    assert shares["user-timeline"] == pytest.approx(0.3, abs=0.08)
    assert shares["compose-post"] == pytest.approx(0.1, abs=0.05)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[tuple[str, str, dict[str, list[str]]]]]]:
    """A real HTTP server that records each request's method, path and form or query fields."""
    seen: list[tuple[str, str, dict[str, list[str]]]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        seen.append((request.method, request.path, parse_qs(body or request.query_string)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", seen
    await runner.cleanup()


@pytest.mark.parametrize(
    ("script", "method"), [("home-timeline", "GET"), ("user-timeline", "GET"), ("compose-post", "POST")]
)
async def test_endpoint_scripts_request_the_target_url(recorder, script: str, method: str) -> None:
    base, seen = recorder
    result = await wrk.run(f"{base}/wrk2-api/x/y", threads=1, connections=1, duration_s=1, script=script)
    assert result.requests > 0 and seen
    assert {(m, p) for m, p, _ in seen} == {(method, "/wrk2-api/x/y")}
    fields = seen[0][2]
    assert "user_id" in fields and ("text" in fields if method == "POST" else "stop" in fields)


async def test_progress_is_reported_while_wrk_runs(service: CVMService) -> None:
    reports: list[tuple[float, float]] = []

    async def progress(elapsed: float, total: float) -> None:
        reports.append((elapsed, total))

    await wrk.run(service.urls()["home-timeline"], threads=1, connections=2, duration_s=2, progress=progress)
    assert len(reports) >= 2 and {t for _, t in reports} == {2}
    assert [e for e, _ in reports] == sorted(e for e, _ in reports) and all(0 <= e <= 2 for e, _ in reports)


def _wrk_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "wrk"]


async def _started(task: asyncio.Task[wrk.WrkResult]) -> psutil.Process:
    for _ in range(200):
        if children := _wrk_children():
            return children[0]
        assert not task.done(), task
        await asyncio.sleep(0.05)
    raise AssertionError("wrk did not start")


async def test_cancelling_kills_wrk(service: CVMService) -> None:
    task = asyncio.ensure_future(wrk.run(service.urls()["home-timeline"], connections=2, duration_s=60))
    child = await _started(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert _wrk_children() == []


async def test_wrk_killed_mid_run_is_a_clear_error(service: CVMService) -> None:
    task = asyncio.ensure_future(wrk.run(service.urls()["home-timeline"], connections=2, duration_s=60))
    (await _started(task)).send_signal(signal.SIGKILL)
    with pytest.raises(HostctlError, match="wrk on this machine was killed by signal SIGKILL mid-run"):
        await task


async def test_missing_wrk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostctlError, match=r"not installed on this machine \(wrk not found; apt-get install wrk\)"):
        await wrk.run("http://127.0.0.1:1/", duration_s=1)


async def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(HostctlError, match="wrk on this machine exited with status 1: unable to connect"):
        await wrk.run("http://127.0.0.1:1/", duration_s=1)
