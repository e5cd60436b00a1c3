"""A console's links on a thread of their own (`LinkThread`), against real agent processes: they connect, answer
and report there, calls from the caller's loop hop to them, and stopping ends the thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostctl.client.link import Fleet, LinkError, LinkState
from hostctl.client.link_thread import LinkThread
from hostctl.client.site import Defaults
from hostctl.demo.site import demo_site
from hostctl.wire.model import Event
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
