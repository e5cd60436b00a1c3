"""Links to real agent processes on local sockets: staleness, faults, recovery, no host blocking another."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostctl.client.link import Fleet, HostLink, LinkError, LinkState
from hostctl.client.link_thread import LinkThread
from hostctl.client.site import Defaults, HostEntry
from hostctl.demo.site import demo_site
from hostctl.wire.decode import Update
from hostctl.wire.model import CVM, DomainState, Event, Host, Snapshot
from tests.support.agents import AgentProcess
from tests.support.waiting import until

DEFAULTS = Defaults(interval=0.2, timeout=1.0, scale_timeout=5.0, backoff_max=0.5)


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[dict[str, AgentProcess]]:
    procs = {name: AgentProcess(tmp_path, name) for name in ("mec-a", "mec-b")}
    await asyncio.gather(*(p.start() for p in procs.values()))
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture
async def fleet(agents: dict[str, AgentProcess]) -> AsyncIterator[Fleet]:
    site = demo_site({name: p.socket for name, p in agents.items()})
    site.defaults = DEFAULTS
    fleet = Fleet(site, who="tester")
    fleet.start()
    await fleet.ready()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def test_links_come_up_fresh_with_snapshots(fleet: Fleet) -> None:
    for link in fleet.links.values():
        assert link.state is LinkState.FRESH, link.error
        assert link.snapshot is not None and [c.name for c in link.snapshot.cvms] == ["snp"]
        assert link.hello["protocol"] == 1


async def test_updates_keep_the_snapshot_current(fleet: Fleet) -> None:
    link = fleet.link("mec-a")
    events: list[Event] = []
    link.on_event(events.append)
    event = await link.scale("snp", 3, expect=2)
    assert (event.before, event.after, event.ok) == (2, 3, True) and event.who.startswith("tester")
    await until(lambda: link.snapshot.cvms[0].online_vcpus == 3)
    await until(lambda: any(e.after == 3 for e in events))


async def test_killed_agent_fails_the_request_goes_stale_and_recovers(
    fleet: Fleet, agents: dict[str, AgentProcess]
) -> None:
    link, other = fleet.link("mec-a"), fleet.link("mec-b")
    scale = asyncio.ensure_future(link.scale("snp", 4, expect=2))  # 2 wake-ups x 1 s
    await asyncio.sleep(0.3)
    agents["mec-a"].kill()
    with pytest.raises(LinkError, match="link lost during scale"):
        await scale
    await until(lambda: link.state is LinkState.STALE)
    assert link.snapshot is not None and link.age is not None  # last data kept, with its age
    assert (await other.call("hello"))["host"] == "mec-b"  # the other host is untouched
    await agents["mec-a"].start()
    await until(lambda: link.state is LinkState.FRESH)
    assert link.attempts >= 2


async def test_stopped_agent_times_out_goes_stale_and_recovers(fleet: Fleet, agents: dict[str, AgentProcess]) -> None:
    link, other = fleet.link("mec-a"), fleet.link("mec-b")
    agents["mec-a"].signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(LinkError, match="no answer to snapshot within 1 s"):
            await link.call("snapshot")
        assert time.monotonic() - started < 3
        assert link.state is LinkState.STALE
        # While mec-a hangs, mec-b answers and stays fresh.
        assert (await other.call("hello"))["host"] == "mec-b"
        assert other.state is LinkState.FRESH
        await asyncio.sleep(0.7)
        assert link.state is LinkState.STALE and link.age > 0.6
    finally:
        agents["mec-a"].signal(signal.SIGCONT)
    await until(lambda: link.state is LinkState.FRESH)


async def test_a_silent_agent_is_shown_stale_on_the_connection_it_still_has(
    fleet: Fleet, agents: dict[str, AgentProcess]
) -> None:
    """No request is needed: a link whose agent stops sending goes stale by its own watch, before it gives up on the
    connection."""
    link = fleet.link("mec-a")
    attempts = link.attempts
    agents["mec-a"].signal(signal.SIGSTOP)
    try:
        await until(lambda: link.state is LinkState.STALE, timeout=5)
        assert link.attempts == attempts and "no data for" in link.error and "reconnecting" not in link.error
    finally:
        agents["mec-a"].signal(signal.SIGCONT)
    await until(lambda: link.state is LinkState.FRESH)


async def test_a_retry_after_a_lost_reply_applies_once(fleet: Fleet, agents: dict[str, AgentProcess]) -> None:
    """The agent applies the scale, the link dies before the reply; the retry finds it done."""
    link = fleet.link("mec-a")
    scale = asyncio.ensure_future(link.scale("snp", 3, expect=2))  # one wake-up: 1 s
    await asyncio.sleep(0.2)
    await link._drop()  # the connection breaks while the agent is mid-request
    with pytest.raises(LinkError, match="link lost during scale"):
        await scale
    await until(lambda: link.state is LinkState.FRESH)
    await asyncio.sleep(1.0)  # the agent finishes what it began
    retry = await link.scale("snp", 3, expect=2)
    assert retry.before == retry.after == 3
    applied = [json.loads(line) for line in agents["mec-a"].audit.read_text().splitlines()]
    changes = [e for e in applied if e["ok"] and e["before"] != e["after"]]
    assert [(e["before"], e["after"]) for e in changes] == [(2, 3)]


async def test_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    site = demo_site({"ghost": tmp_path / "nobody.sock"})
    site.defaults = DEFAULTS
    link = HostLink(site.hosts[0], site.defaults)
    link.start()
    await link.ready(3)
    try:
        assert link.state is LinkState.CONNECTING and "cannot reach agent socket" in link.error
        with pytest.raises(LinkError, match=r"not connected .*nothing was sent"):
            await link.call("hello")
    finally:
        await link.stop()


async def test_links_run_report_and_answer_on_their_thread(agents: dict[str, AgentProcess]) -> None:
    site = demo_site({name: p.socket for name, p in agents.items()})
    site.defaults = DEFAULTS
    thread = LinkThread()
    fleet = Fleet(site, who="tester", thread=thread)
    reported_on: set[str] = set()
    events: list[Event] = []
    for link in fleet.links.values():
        link.on_update(lambda _link: reported_on.add(threading.current_thread().name))
        link.on_event(events.append)
    fleet.start()
    try:
        await fleet.ready()
        assert all(link.state is LinkState.FRESH for link in fleet.links.values())
        assert reported_on == {"links"}  # every listener ran on the links' thread, none on the caller's
        link = fleet.link("mec-a")
        assert link._task is not None and link._task.get_loop() is thread.loop
        assert thread.loop is not asyncio.get_running_loop()

        event = await link.scale("snp", 3, expect=2)  # called from this loop, run on the links'
        assert (event.before, event.after, event.ok, event.host) == (2, 3, True, "mec-a")
        await until(lambda: any(e.after == 3 for e in events), timeout=5)
        await until(lambda: (c := link.cvm("snp")) is not None and c.online_vcpus == 3, timeout=5)

        agents["mec-b"].kill()  # one host gone: the other still answers from the same thread
        await until(lambda: fleet.link("mec-b").state is not LinkState.FRESH, timeout=5)
        assert (await fleet.link("mec-a").scale("snp", 2, expect=3)).after == 2
    finally:
        await fleet.stop()
    assert not thread._thread.is_alive() and thread.loop.is_closed()
    with pytest.raises(LinkError, match="not connected"):  # stopped: nothing is sent, and nothing hangs
        await fleet.link("mec-a").scale("snp", 3, expect=2)


def test_an_update_is_announced_before_the_events_it_carries() -> None:
    """A console refreshes when an event of its own request arrives: the update that carried it (the new count) must
    already be applied and announced, or that refresh finds nothing new and the change waits for the next tick."""
    link = HostLink(HostEntry(name="mec-1", socket="/nonexistent.sock"), Defaults())
    link.snapshot = Snapshot(host=Host("mec-1", "test:///x", 8, 4096), cvms=[CVM("snp", "u", DomainState.RUNNING)])
    seen: list[str] = []
    link.on_update(lambda lk: seen.append(f"update {lk.cvm('snp').online_vcpus}"))  # type: ignore[union-attr]
    link.on_event(lambda e: seen.append(f"event {e.after}"))
    grown = CVM("snp", "u", DomainState.RUNNING, online_vcpus=2)
    event = Event("mec-1", "snp", "scale", "console", ok=True, before=1, after=2)
    link._on_notification("update", Update(seq=2, cvms={"snp": grown}, events=[event]))
    assert seen == ["update 2", "event 2"]


def test_updates_replace_records_in_place_until_cvms_come_or_go() -> None:
    """An update's cost follows the records it carries: a change of existing CVMs swaps those records in the same
    list; a CVM new or gone gives a new list, sorted by name, and later changes land in that one."""
    link = HostLink(HostEntry(name="mec-1", socket="/nonexistent.sock"), Defaults())
    link.snapshot = Snapshot(
        host=Host("mec-1", "test:///x", 8, 4096), cvms=[CVM(n, n, DomainState.RUNNING) for n in "bd"]
    )

    def names() -> list[str]:
        return [c.name for c in link.snapshot.cvms]  # type: ignore[union-attr]

    link._on_notification("update", Update(seq=2, cvms={"d": CVM("d", "d", DomainState.PAUSED)}))
    kept = link.snapshot.cvms
    b = kept[0]
    link._on_notification("update", Update(seq=3, cvms={"d": CVM("d", "d", DomainState.RUNNING, online_vcpus=3)}))
    assert link.snapshot.cvms is kept and kept[0] is b and link.cvm("d").online_vcpus == 3  # type: ignore[union-attr]
    link._on_notification("update", Update(seq=4, cvms={"a": CVM("a", "a", DomainState.RUNNING)}, removed=["b"]))
    assert names() == ["a", "d"] and link.snapshot.cvms is not kept
    link._on_notification("update", Update(seq=5, cvms={"c": CVM("c", "c", DomainState.RUNNING)}))
    link._on_notification("update", Update(seq=6, cvms={"a": CVM("a", "a", DomainState.PAUSED)}))
    assert names() == ["a", "c", "d"] and link.cvm("a").state is DomainState.PAUSED  # type: ignore[union-attr]


_STATES = st.sampled_from([DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF])
_RECORD = st.builds(
    lambda name, state, online: CVM(name, name, state, online_vcpus=online),
    st.sampled_from("abcdef"),
    _STATES,
    st.none() | st.integers(1, 9),
)


@given(
    first=st.lists(_RECORD, unique_by=lambda c: c.name),
    updates=st.lists(st.tuples(st.lists(_RECORD), st.lists(st.sampled_from("abcdef"), max_size=2)), max_size=12),
)
def test_the_running_vcpus_follow_every_update(first: list[CVM], updates: list[tuple[list[CVM], list[str]]]) -> None:
    """The host row's vCPUs in use are kept from each update's records alone; after any mix of changes, CVMs new and
    gone, they are what a count over all of the host's CVMs gives."""
    link = HostLink(HostEntry(name="mec-1", socket="/nonexistent.sock"), Defaults())
    link.snapshot = Snapshot(host=Host("mec-1", "test:///x", 8, 4096), cvms=sorted(first, key=lambda c: c.name))

    def counted() -> tuple[int, int]:
        running = [c for c in link.snapshot.cvms if c.state is DomainState.RUNNING]  # type: ignore[union-attr]
        return sum(c.online_vcpus or 0 for c in running), sum(c.online_vcpus is None for c in running)

    assert link.vcpus_running == counted()
    for seq, (changed, removed) in enumerate(updates, start=2):
        gone = [name for name in removed if name not in {c.name for c in changed}]
        link._on_notification("update", Update(seq=seq, cvms={c.name: c for c in changed}, removed=gone))
        assert link.vcpus_running == counted()


async def test_a_malformed_reply_is_a_link_error_naming_the_host_and_the_value(tmp_path: Path) -> None:
    """An agent whose replies do not fit the records (another version, a bug): a LinkError that names the host and
    the bad value, never a half-built record or an exception the console does not expect."""
    snapshot = Snapshot(Host("mec-x", "test:///x", 8, 4096), [CVM("web", "u-1", DomainState.RUNNING)]).to_dict()
    replies = {
        "hello": {"agent": "test", "methods": ["hello", "snapshot", "subscribe", "policy", "doctor"]},
        "snapshot": snapshot,
        "subscribe": True,
        "policy": {"policy": 7, "enabled": "yes"},
        "doctor": {"host": "mec-x", "checks": "all fine"},
    }

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            request = json.loads(line)
            reply = {"jsonrpc": "2.0", "id": request["id"], "result": replies[request["method"]]}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()

    path = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(agent, str(path))
    link = HostLink(HostEntry(name="mec-x", socket=str(path)), DEFAULTS)
    link.start()
    try:
        await until(lambda: link.state is LinkState.FRESH)
        with pytest.raises(LinkError, match=r"^mec-x: the agent's policy is malformed: .*\$\.policy"):
            await link.set_policy("web", enabled=True)
        with pytest.raises(LinkError, match=r"^mec-x: the agent's doctor is malformed: .*\$\.checks"):
            await link.doctor()
        replies["snapshot"] = {**snapshot, "cvms": [{"name": "web"}]}  # no uuid, no state
        await link.stop()
        link.start()
        await until(lambda: "the agent's snapshot is malformed" in link.error)
        assert link.state is not LinkState.FRESH
    finally:
        await link.stop()
        server.close()
