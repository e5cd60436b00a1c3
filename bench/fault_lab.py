"""The fault campaign's hosts, in a process of their own: agents, sshds, cuttable proxies and the injector.

    python -m bench.fault_lab RUNTIME WAKE_MS NICE NAME...

Started by `bench.faults`, so that the proxies' forwarding and the injector's work never share the console's
process (its GIL) and what the campaign measures of the console is the console's own. On a site the hosts are other
machines; here they share the console's cores, so the process (and every agent and sshd it starts) runs at niceness
NICE: a burst of restarted agents then takes the CPU the console leaves, not the console's. It starts every host, then
prints one JSON line describing them (where the console's site file must point). Then it reads one JSON line per
fault on stdin, `{"id": N, "host": NAME, "kind": KIND, "hold": S}`, and answers with two lines,
`{"id": N, "started": T}` as the fault begins and `{"id": N, "ended": T, "error": TEXT|null}` when it is over, where T
is `time.monotonic()` (one clock for every process of the machine). End of input stops every host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.agents import AgentProcess
from tests.support.proxy import CuttableProxy
from tests.support.sshd import RestartableSSHD


@dataclass
class Host:
    name: str
    agent: AgentProcess
    sshd: RestartableSSHD
    proxy: CuttableProxy

    @classmethod
    async def start(cls, runtime: Path, name: str, wake_ms: float) -> Host:
        agent = AgentProcess(runtime, name, wake_ms=wake_ms, log=runtime / f"{name}.agent.log")
        sshd = RestartableSSHD(runtime / f"{name}-sshd")
        await agent.start()
        await sshd.start()
        proxy = await CuttableProxy(sshd.endpoint.host, sshd.endpoint.port).start()
        return cls(name, agent, sshd, proxy)

    async def stop(self) -> None:
        await self.proxy.close()
        await self.sshd.stop()
        await asyncio.to_thread(self.agent.stop)

    def described(self) -> dict[str, Any]:
        """Where the console reaches this host: through its proxy, as its sshd's user, to its agent's socket."""
        endpoint = self.sshd.endpoint
        return {
            "name": self.name,
            "host": self.proxy.listen_host,
            "port": self.proxy.listen_port,
            "user": endpoint.user,
            "key": str(endpoint.client_key),
            "known_hosts": endpoint.known_hosts_line(self.proxy.listen_port),
            "socket": str(self.agent.socket),
        }

    async def inject(self, kind: str, hold: float, started: Callable[[], None]) -> None:
        """Inflict `kind` on this host (calling `started` as it begins) and return when it is over."""
        started()
        if kind == "kill":
            await asyncio.to_thread(self.agent.kill)
            await self.agent.start()
        elif kind == "stop":
            self.agent.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(hold)
            finally:
                self.agent.signal(signal.SIGCONT)
        elif kind == "cut":
            self.proxy.cut()
        elif kind == "sshd":
            await self.sshd.restart()
        elif kind == "blackhole":
            self.proxy.pause()
            try:
                await asyncio.sleep(hold)
            finally:
                self.proxy.resume()
        else:
            raise ValueError(f"unknown fault kind {kind!r}")


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def fault(hosts: dict[str, Host], order: dict[str, Any]) -> None:
    """One fault, as ordered; its start and end (or the injector's own failure) said on stdout."""
    ident = order["id"]
    error = None
    try:
        host = hosts[order["host"]]
        await host.inject(order["kind"], float(order["hold"]), lambda: say({"id": ident, "started": time.monotonic()}))
    except Exception as e:  # the injector's own failure: reported, and the campaign goes on
        error = f"{type(e).__name__}: {e}"
    say({"id": ident, "ended": time.monotonic(), "error": error})


async def serve(runtime: Path, wake_ms: float, names: list[str]) -> None:
    hosts: dict[str, Host] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        for name in names:
            hosts[name] = await Host.start(runtime, name, wake_ms)
        say({"hosts": [h.described() for h in hosts.values()]})
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            task = asyncio.create_task(fault(hosts, json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        for host in hosts.values():
            with contextlib.suppress(Exception):
                await host.stop()


if __name__ == "__main__":
    os.nice(int(sys.argv[3]))
    asyncio.run(serve(Path(sys.argv[1]), float(sys.argv[2]), sys.argv[4:]))
