"""Worker wake/park latency (guest driver) against vCPU hot-add (hotplug driver) on the lab site: real QEMU guests
under TCG, scaled through the lab's running host agent over one open HostLink. Writes bench/results/worker_latency.md.

Each round, from a freshly started plain VM and a guest-driver CVM at its boot vCPU, steps both from n to n+1 for
n = 1, 2, 3, wake and hot-add alternating (which goes first alternates by step and round), then parks the CVM's
workers back, 4 -> 3 -> 2 -> 1. Hot-unplug times out on QEMU 7.2 / libvirt 9.0, so the plain VM is reset between
rounds by destroying and starting it again (untimed). Every change is also timed as the guest itself sees it:
`guest-get-vcpus` polled back to back after the agent's reply, until the guest reports the new online count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import libvirt

from hostctl.client.link import HostLink, LinkState
from hostctl.client.site import load as load_site
from hostctl.errors import HostctlError
from hostctl.lab import libvirtd, qga
from hostctl.lab.bounded import within
from hostctl.lab.domains import GUESTS, MEMORY_MIB
from hostctl.lab.launcher import HOST
from hostctl.stats import percentile
from hostctl.wire.model import DomainState
from tests.support import lab as labkit
from tests.support.waiting import until

ROUNDS = 7  # x 3 steps: 21 wakes, 21 parks, 21 hot-adds
STEPS = (1, 2, 3)  # n -> n+1; the lab's guests have 4 vCPUs at most
GUEST_SEEN_TIMEOUT = 30.0  # the guest must report the new count within this after the agent's reply
RESET_TIMEOUT = 180.0  # destroy + start of the plain VM until its guest agent answers and the host agent sees it
SETTLE_S = 3.0  # after a reset, let the fresh guest's boot work finish before timing anything
WAKE, PARK, HOTADD = "wake one worker (guest driver)", "park one worker (guest driver)", "hot-add one vCPU (hotplug)"
OUT = Path(__file__).parent / "results" / "worker_latency.md"


@dataclass
class Sample:
    kind: str
    step: str  # "1->2"
    request_ms: float  # the agent's scale request, round trip over the open link
    guest_ms: float  # from the request until the guest's own view shows the new count


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    polls_ms: list[float] = field(default_factory=list)  # guest-get-vcpus round trips: the in-guest resolution
    reset_s: list[float] = field(default_factory=list)


def guest_online_at(dom: libvirt.virDomain, target: int, run: Run) -> float:
    """Poll the guest's own view back to back until it shows `target` online: when (perf_counter) it first did."""
    deadline = time.monotonic() + GUEST_SEEN_TIMEOUT
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        online = qga.vcpus(dom).online
        seen = time.perf_counter()
        run.polls_ms.append((seen - t0) * 1e3)
        if online == target:
            return seen
    raise RuntimeError(f"{dom.name()}: the guest did not report {target} online vCPUs within {GUEST_SEEN_TIMEOUT} s")


async def step(link: HostLink, dom: libvirt.virDomain, kind: str, current: int, target: int, *, run: Run) -> None:
    """One scale through the host agent, compare-and-set, timed by request and as the guest sees it."""
    t0 = time.perf_counter()
    event = await link.scale(dom.name(), target, expect=current, why="bench")
    replied = time.perf_counter()
    if not event.ok or event.after != target:
        raise RuntimeError(f"{dom.name()}: {current}->{target} not applied: {event.why}")
    seen = await asyncio.to_thread(guest_online_at, dom, target, run)
    run.samples.append(Sample(kind, f"{current}->{target}", (replied - t0) * 1e3, (seen - t0) * 1e3))


async def reset(link: HostLink, dom: libvirt.virDomain, run: Run) -> None:
    """Destroy and start the plain VM (hot-unplug times out on QEMU 7.2), wait until its guest agent answers and
    the host agent shows it running with its boot vCPU, then let it settle."""
    t0 = time.monotonic()

    def restart() -> None:
        if dom.isActive():
            dom.destroy()
        dom.create()

    await asyncio.to_thread(within, libvirtd.CALL_TIMEOUT, f"restarting {dom.name()}", restart)
    if await asyncio.to_thread(qga.wait_ping, dom, t0 + RESET_TIMEOUT) is None:
        raise RuntimeError(f"{dom.name()}: its guest agent did not answer within {RESET_TIMEOUT:.0f} s of start")

    def shown() -> bool:
        cvm = link.cvm(dom.name())
        return cvm is not None and cvm.state is DomainState.RUNNING and cvm.online_vcpus == 1

    await until(shown, timeout=RESET_TIMEOUT - (time.monotonic() - t0), interval=0.1)
    run.reset_s.append(time.monotonic() - t0)
    await asyncio.sleep(SETTLE_S)


async def measure(lab: labkit.LabSite) -> Run:
    site = load_site(lab.site)
    link = HostLink(site.host(HOST), site.defaults, who="bench")
    conn = libvirtd.open_connection()
    run = Run()
    link.start()
    try:
        await until(lambda: link.state is LinkState.FRESH and link.cvm(lab.cvm("plain")) is not None, timeout=60)
        cvm = await asyncio.to_thread(within, libvirtd.CALL_TIMEOUT, "lookup", conn.lookupByName, lab.cvm("snp-1"))
        plain = await asyncio.to_thread(within, libvirtd.CALL_TIMEOUT, "lookup", conn.lookupByName, lab.cvm("plain"))
        for r in range(ROUNDS):
            if r:
                await reset(link, plain, run)
            for n in STEPS:
                pair = [(cvm, WAKE), (plain, HOTADD)]
                for dom, kind in pair if (r + n) % 2 else reversed(pair):
                    await step(link, dom, kind, n, n + 1, run=run)
            for n in reversed(STEPS):
                await step(link, cvm, PARK, n + 1, n, run=run)
            print(f"round {r + 1}/{ROUNDS} done", flush=True)
    finally:
        await link.stop()
        with contextlib.suppress(libvirt.libvirtError, HostctlError):
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)
    return run


def command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown (no output)"


def machine(lab: labkit.LabSite, load: float) -> list[str]:
    """The machine, as read from it (a value that cannot be read says why)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        cpu = model.group(1).strip() if model else "unknown (no model name in /proc/cpuinfo)"
    except OSError as e:
        cpu = f"unknown ({e.strerror})"
    kernel = re.search(r"\(kernel ([^)]+)\)", lab.up)
    lib = libvirt.getVersion()
    snp, plain = (next(g for g in GUESTS if g.name == name) for name in ("snp-1", "plain"))
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical CPUs (shared with other work while this ran: "
        f"1-minute load average {load:.2f} before the lab came up)",
        f"- host: {platform.system()} {platform.release().split('-')[0]}, "
        f"{command_version(['qemu-system-x86_64', '--version'])} (TCG: no KVM), "
        f"libvirt {lib // 1_000_000}.{lib // 1000 % 1000}.{lib % 1000}, libvirt-python {version('libvirt-python')}",
        f"- guests: Debian kernel {kernel.group(1) if kernel else 'unknown (not in lab up output)'}, busybox, "
        f"qemu-guest-agent; {MEMORY_MIB} MiB; the CVM has {snp.max_vcpus} vCPUs present from launch ({snp.boot_vcpus} "
        f"online at boot), the plain VM {plain.boot_vcpus} of {plain.max_vcpus}",
    ]


def p(values: list[float], q: float) -> float:
    return percentile(values, q)


def report(run: Run, about: list[str], took_s: float) -> str:
    by = {k: [s for s in run.samples if s.kind == k] for k in (WAKE, PARK, HOTADD)}
    count = {k: len(v) for k, v in by.items()}
    lines = [
        "# Worker wake/park against vCPU hot-add, on the lab site (TCG)",
        "",
        f"One run of `python -m bench.worker_latency` ({datetime.now(UTC):%Y-%m-%d}, {took_s / 60:.1f} min including "
        "the lab's boot). It brings the lab up (`hostctl lab up`: libvirtd, three real QEMU guests, one host agent), "
        "keeps one `HostLink` open to the lab's running host agent and sends `scale(cvm, n+1, expect=n)` over it; "
        "the lab is taken down at the end.",
        "",
        *about,
        "",
        "**What is compared.** *Wake*: the `guest` driver asks the guest agent to online one more of the CVM's "
        "present vCPUs (`setVcpusFlags(n, VIR_DOMAIN_VCPU_GUEST)`); *park* offlines it again. *Hot-add*: the "
        "`hotplug` driver plugs one more vCPU into the plain VM (`VIR_DOMAIN_AFFECT_LIVE`); the guest kernel onlines "
        "it on the hotplug event (a uevent helper, as a distribution's udev rule does). "
        f"{ROUNDS} rounds; in each, both go n -> n+1 for n = 1, 2, 3, wake and hot-add alternating (which goes "
        "first alternates by step and round), then the CVM's workers park 4 -> 3 -> 2 -> 1. Hot-unplug times out "
        "on QEMU 7.2 / libvirt 9.0, so between rounds the plain VM is reset by destroying and starting it again "
        f"(untimed; {p(run.reset_s, 0.5):.0f} s p50 until its guest agent answered and the host agent showed it), "
        f"then {SETTLE_S:.0f} s to settle.",
        "",
        "*Request*: the scale request's round trip through the host agent (compare-and-set read, driver, metadata "
        "write, audit fsync, reply). *In the guest*: from sending the request until the guest's own "
        "`guest-get-vcpus`, polled back to back after the reply, first reports the new online count "
        f"(resolution: one poll, {p(run.polls_ms, 0.5):.1f} ms p50 / {p(run.polls_ms, 0.99):.1f} ms p99).",
        "",
        "| operation | samples | request p50 ms | request p99 ms | in the guest p50 ms | in the guest p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, samples in by.items():
        req, seen = [s.request_ms for s in samples], [s.guest_ms for s in samples]
        lines.append(
            f"| {kind} | {count[kind]} | {p(req, 0.5):.0f} | {p(req, 0.99):.0f} | {p(seen, 0.5):.0f} | "
            f"{p(seen, 0.99):.0f} |"
        )

    def ratio(kind: str, q: float, attr: str) -> str:
        a = p([getattr(s, attr) for s in by[kind]], q)
        b = p([getattr(s, attr) for s in by[HOTADD]], q)
        return f"{a / b:.2f}"

    lines += [
        "",
        "| ratio to hot-add | request p50 | request p99 | in the guest p50 | in the guest p99 |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {kind.split(' (')[0]} : hot-add | {ratio(kind, 0.5, 'request_ms')} | {ratio(kind, 0.99, 'request_ms')} "
            f"| {ratio(kind, 0.5, 'guest_ms')} | {ratio(kind, 0.99, 'guest_ms')} |"
            for kind in (WAKE, PARK)
        ),
        "",
        "Medians by step (request / in the guest, ms):",
        "",
        "| step | wake | hot-add | park (reverse step) |",
        "|---|---:|---:|---:|",
    ]
    for n in STEPS:
        fwd, back = f"{n}->{n + 1}", f"{n + 1}->{n}"

        def med(kind: str, at: str) -> str:
            chosen = [s for s in by[kind] if s.step == at]
            return f"{p([s.request_ms for s in chosen], 0.5):.0f} / {p([s.guest_ms for s in chosen], 0.5):.0f}"

        lines.append(f"| {fwd} | {med(WAKE, fwd)} | {med(HOTADD, fwd)} | {med(PARK, back)} |")
    lines += [
        "",
        f"p99 is by nearest rank: with {min(count.values())} samples it is the largest one. **TCG is not KVM**: "
        "vCPUs are emulated, the guests' kernel work (onlining a vCPU, the stop-machine step of offlining one) and "
        "QEMU's device hotplug all run slower than under KVM (by how much is not measured here), on a machine "
        "shared with other work. Read these as a relative figure, worker wake/park against hotplug on the same host "
        "and guests, not as SEV-SNP or KVM timings: the lab has no SNP hardware, no memory encryption and no "
        "attestation.",
    ]
    return "\n".join(lines) + "\n"


async def main() -> None:
    began, load = time.monotonic(), os.getloadavg()[0]
    print("bringing the lab up (30-60 s under TCG) ...", flush=True)
    lab = labkit.start()
    down = False
    try:
        about = machine(lab, load)
        run = await measure(lab)
        labkit.stop_and_check(lab)
        down = True
    finally:
        if not down:  # the host agent too, then whatever lab down left
            labkit.hostctl("lab", "down", "--runtime", lab.runtime)
        labkit.sweep(lab.runtime, lab.prefix)
    text = report(run, about, time.monotonic() - began)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    asyncio.run(main())
