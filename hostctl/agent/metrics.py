"""Prometheus metrics of one agent, served on an opt-in address by prometheus-client's own HTTP server thread.

What the agent counts as it runs (policy decisions, scale actions, probes) is tallied on its event loop (`Tallies`);
what it knows now (CVMs, the host, how fresh its reads are) is read when Prometheus scrapes. A scrape runs on the
server's thread: it asks the event loop for one consistent `Reading` (in-memory copies, never a libvirt call),
waiting COLLECT_TIMEOUT_S at most, and builds the metric families off the loop. A value the agent cannot read now
(a CVM's online count while its guest agent does not answer) is absent, and a `..._known` gauge says so; it is never
a stand-in 0. Label sets are bounded: host, CVM, service and policy names (the fleet and the policy files), and
fixed vocabularies for everything else (`REASONS`, `result`, `by`, `direction`, `state`, `security`, `kind`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from hostctl import __version__, data
from hostctl.agent.probes import ProbeSample
from hostctl.elastic.guard import Decision, Situation, capacity
from hostctl.elastic.runner import is_policy
from hostctl.errors import HostctlError
from hostctl.wire.model import DomainState, Event, Snapshot

if TYPE_CHECKING:
    from hostctl.agent.server import Agent

LOOPBACK = "127.0.0.1"
METRICS_AT = "hostctl: metrics at "  # how a served agent says where (on stderr), for a launcher to read back
COLLECT_TIMEOUT_S = 2.0  # how long a scrape waits for the event loop to hand over a reading
STOP_TIMEOUT_S = 2.0
# The guard's cause codes (`hostctl.elastic.guard`, `hostctl.elastic.runner`); any other is counted as "other".
REASONS = frozenset(
    {
        "up",
        "down",
        "steady",
        "operator",
        "stale",
        "no-data",
        "cooldown",
        "capacity",
        "refused",
        "not-running",
        "unknown-count",
        "unknown-policy",
        "error",
    }
)
# Probe latency buckets (seconds): loopback probes take a few ms, the demo's SLO is 50 ms, a probe gives up at 2 s.
PROBE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def parse_address(text: str, option: str = "--metrics") -> tuple[str, int]:
    """`[ADDR:]PORT` (ADDR an IP address, `[...]` for IPv6; loopback by default) as (address, port); HostctlError
    naming the option and the value otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = LOOPBACK
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise HostctlError(f"{option} {text!r}: expected [ADDR:]PORT, e.g. 9470 or 127.0.0.1:9470") from None
    if not 0 <= port <= 65535:
        raise HostctlError(f"{option} {text!r}: port {port} is outside 0..65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise HostctlError(f"{option} {text!r}: {host!r} is not an IP address (e.g. 127.0.0.1 or [::1])") from None
    return host, port


def host_port(host: str, port: int) -> str:
    """`host:port` as Prometheus names a target (`[addr]:port` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def scrape_config(targets: dict[str, str], *, interval_s: float = 5.0) -> str:
    """A Prometheus configuration scraping the agents at `targets` (name -> `host:port`) every `interval_s`, with
    the shipped alert rules. JSON, which Prometheus reads as the YAML it is."""
    config = {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "rule_files": [str(data.PROMETHEUS / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "hostctl",
                "static_configs": [
                    {"targets": [address], "labels": {"agent": name}} for name, address in targets.items()
                ],
            }
        ],
    }
    return json.dumps(config, indent=2) + "\n"


# -- what the agent counts as it runs (on its event loop) ----------------------------------------------------


@dataclass
class Histogram:
    """One service's probe latencies: a count per bucket of PROBE_BUCKETS_S (the last above them all), and the sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(PROBE_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(PROBE_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, as Prometheus's `le` buckets."""
        running, out = 0, []
        for bound, count in zip((*(f"{b:g}" for b in PROBE_BUCKETS_S), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass
class Tallies:
    """Counters the agent keeps for Prometheus, updated on its event loop."""

    decisions: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # cvm, policy, direction, reason
    scales: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # cvm, result, by
    probes: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (cvm, service) -> successful probes
    probe_failures: Counter[tuple[str, str]] = field(default_factory=Counter)

    def decided(self, cvm: str, policy: str, decision: Decision) -> None:
        """One decision of a CVM's elastic policy: up, down or hold, and its cause."""
        direction = "hold"
        if decision.changes and decision.current is not None and decision.target is not None:
            direction = "up" if decision.target > decision.current else "down"
        reason = decision.code if decision.code in REASONS else "other"
        self.decisions[cvm, policy, direction, reason] += 1

    def event(self, event: Event) -> None:
        """An audit event: a scale, applied or refused, by an operator or a policy."""
        if event.action == "scale":
            by = "policy" if is_policy(event.who) else "operator"
            self.scales[event.cvm, "applied" if event.ok else "refused", by] += 1

    def probed(self, cvm: str, service: str, sample: ProbeSample) -> None:
        if sample.ok:
            self.probes.setdefault((cvm, service), Histogram()).observe(sample.ms / 1000)
        else:
            self.probe_failures[cvm, service] += 1

    def keep(self, cvms: set[str], services: set[tuple[str, str]]) -> None:
        """Forget CVMs and services that are gone (their series end, as their label sets must stay bounded)."""
        for gone in [k for k in self.decisions if k[0] not in cvms]:
            del self.decisions[gone]
        for gone_scale in [k for k in self.scales if k[0] not in cvms]:
            del self.scales[gone_scale]
        for gone_service in [k for k in self.probes if k not in services]:
            del self.probes[gone_service]
        for gone_service in [k for k in self.probe_failures if k not in services]:
            del self.probe_failures[gone_service]

    def copy(self) -> Tallies:
        return Tallies(
            Counter(self.decisions),
            Counter(self.scales),
            {k: Histogram(list(h.counts), h.sum_s) for k, h in self.probes.items()},
            Counter(self.probe_failures),
        )


# -- what one scrape reads -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """Everything one scrape exports, copied on the agent's loop."""

    snapshot: Snapshot
    tallies: Tallies
    guest_errors: dict[str, int]
    connected: bool
    sampled_at: float | None  # the last sample that worked (Unix time)
    interval: float
    capacity: dict[str, int]  # policy -> worker capacity of the host under that policy's guard
    peers: int


def read(agent: Agent) -> Reading:
    """Copy what the agent knows now (on its event loop: nothing here waits)."""
    snapshot = agent.snapshot()
    snapshot.host = msgspec.structs.replace(snapshot.host)  # the sampler updates the host's record in place
    cvms = {c.name for c in snapshot.cvms}
    agent.tallies.keep(cvms, {(s.cvm, s.name) for s in snapshot.services})
    host = snapshot.host
    boot = sum(c.boot_vcpus for c in snapshot.cvms if c.state is DomainState.RUNNING)
    room = Situation(
        now=0.0, current=0, boot=0, max=0, host_cpus=host.cpus, host_boot=boot, host_workers=0, sample_age=None
    )
    return Reading(
        snapshot=snapshot,
        tallies=agent.tallies.copy(),
        guest_errors={k: v for k, v in agent.host.guest_errors.items() if k in cvms},
        connected=agent.host.connected,
        sampled_at=agent.sampled_at,
        interval=agent.interval,
        capacity={name: capacity(room, spec.guard) for name, spec in agent.elastic.policies.items()},
        peers=agent.peers,
    )


def families(reading: Reading, now: float) -> Iterator[Metric]:
    """The metric families of one reading (`now`: Unix time, for freshness)."""
    snap = reading.snapshot
    h = snap.host.name

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"hostctl_{name}", doc, labels=["host", *labels])

    # -- the host and how fresh its reads are
    info = gauge("agent_info", "The agent's version (always 1).", ("version",))
    info.add_metric([h, __version__], 1)
    peers = gauge("agent_peers", "Peers connected to the agent (consoles, hostctl commands).")
    peers.add_metric([h], reading.peers)
    connected = gauge("libvirt_connected", "1 while the libvirt connection is open, 0 while it reconnects.")
    connected.add_metric([h], int(reading.connected))
    interval = gauge("sample_interval_seconds", "Seconds between the agent's samples of CPU use and vCPU counts.")
    interval.add_metric([h], reading.interval)
    sampled = gauge("last_sample_timestamp_seconds", "When the agent last sampled the host (absent: never).")
    fresh = gauge("host_fresh", "1 while libvirt is connected and the last sample is at most two intervals old.")
    is_fresh = reading.connected and reading.sampled_at is not None and now - reading.sampled_at <= 2 * reading.interval
    fresh.add_metric([h], int(is_fresh))
    if reading.sampled_at is not None:
        sampled.add_metric([h], reading.sampled_at)
    yield from (info, peers, connected, interval, sampled, fresh)

    cpus = gauge("host_cpus", "CPUs of the host.")
    cpus.add_metric([h], snap.host.cpus)
    memory = gauge("host_memory_bytes", "Memory of the host.")
    memory.add_metric([h], snap.host.memory_mib * 1024 * 1024)
    usage = gauge("host_cpu_usage_ratio", "CPU use of the host, 0 to 1.")
    usage.add_metric([h], snap.host.cpu_percent / 100)
    running = [c for c in snap.cvms if c.state is DomainState.RUNNING]
    known = [c for c in running if c.online_vcpus is not None]
    boot = gauge("host_boot_vcpus", "Boot vCPUs of the running CVMs (they always run).")
    boot.add_metric([h], sum(c.boot_vcpus for c in running))
    online = gauge("host_online_vcpus", "Online vCPUs of the running CVMs whose count is known.")
    online.add_metric([h], sum(c.online_vcpus or 0 for c in known))
    workers = gauge("host_workers_active", "Active workers of the running CVMs whose count is known.")
    workers.add_metric([h], sum(c.workers_active or 0 for c in known))
    unknown = gauge("host_cvms_count_unknown", "Running CVMs whose online count is unknown now.")
    unknown.add_metric([h], len(running) - len(known))
    cap = gauge(
        "host_worker_capacity",
        "Active workers the host may run under a policy's guard: floor(CPUs x overcommit) - boot vCPUs.",
        ("policy",),
    )
    for policy, workers_cap in sorted(reading.capacity.items()):
        cap.add_metric([h, policy], workers_cap)
    yield from (cpus, memory, usage, boot, online, workers, unknown, cap)
    yield from _asids(snap, h)

    # -- each CVM
    by_cvm = ("cvm", "security")
    state = gauge("cvm_state", "1 for the CVM's run state, 0 for the others.", ("cvm", "state"))
    cvm_info = gauge("cvm_info", "A CVM's worker driver (always 1).", ("cvm", "security", "driver"))
    cvm_boot = gauge("cvm_boot_vcpus", "vCPUs the CVM boots with (always online).", by_cvm)
    cvm_max = gauge("cvm_max_vcpus", "Most vCPUs the CVM can have online (boot + worker vCPUs).", by_cvm)
    cvm_online = gauge("cvm_online_vcpus", "Online vCPUs (absent while unknown).", by_cvm)
    cvm_known = gauge("cvm_online_vcpus_known", "1 when the CVM's online count is known now, else 0.", by_cvm)
    cvm_active = gauge("cvm_workers_active", "Active worker vCPUs (absent while unknown).", by_cvm)
    cvm_workers = gauge("cvm_workers_max", "Worker vCPUs the CVM has (max - boot).", by_cvm)
    cvm_cpu = gauge("cvm_cpu_usage_ratio", "CPU use of the CVM's online vCPUs, 0 to 1 (absent while unknown).", by_cvm)
    enabled = gauge("cvm_policy_enabled", "1 when the CVM's elastic policy is on, else 0.", ("cvm", "policy"))
    alert = gauge(
        "cvm_policy_alert", "1 when the policy's last decision held for want of data or capacity.", ("cvm", "policy")
    )
    for c in snap.cvms:
        labels = [h, c.name, c.security.value]
        for run_state in DomainState:
            state.add_metric([h, c.name, run_state.value], int(c.state is run_state))
        cvm_info.add_metric([*labels, c.driver], 1)
        cvm_boot.add_metric(labels, c.boot_vcpus)
        cvm_max.add_metric(labels, c.max_vcpus)
        cvm_known.add_metric(labels, int(c.online_vcpus is not None))
        cvm_workers.add_metric(labels, c.workers_max)
        if c.online_vcpus is not None:
            cvm_online.add_metric(labels, c.online_vcpus)
            cvm_active.add_metric(labels, c.workers_active or 0)
        if c.cpu_percent is not None:
            cvm_cpu.add_metric(labels, c.cpu_percent / 100)
        if c.elastic is not None:
            enabled.add_metric([h, c.name, c.elastic.policy], int(c.elastic.enabled))
            alert.add_metric([h, c.name, c.elastic.policy], int(c.elastic.enabled and c.elastic.alert))
    yield from (state, cvm_info, cvm_boot, cvm_max, cvm_online, cvm_known, cvm_active, cvm_workers, cvm_cpu)
    yield from (enabled, alert)

    # -- what happened
    tallies = reading.tallies
    decisions = CounterMetricFamily(
        "hostctl_policy_decisions",
        "Elastic policy decisions: direction up, down or hold, and the guard's reason.",
        labels=["host", "cvm", "policy", "direction", "reason"],
    )
    for (cvm, policy, direction, reason), n in sorted(tallies.decisions.items()):
        decisions.add_metric([h, cvm, policy, direction, reason], n)
    scales = CounterMetricFamily(
        "hostctl_scale_actions",
        "Scale requests by result (applied, refused) and by whom (operator, policy).",
        labels=["host", "cvm", "result", "by"],
    )
    for c in snap.cvms:
        for result in ("applied", "refused"):
            for by in ("operator", "policy"):
                scales.add_metric([h, c.name, result, by], tallies.scales[c.name, result, by])
    guest = CounterMetricFamily(
        "hostctl_guest_agent_errors",
        "Guest-agent calls for a CVM's online count that failed or overstayed libvirt's agent timeout.",
        labels=["host", "cvm"],
    )
    for cvm, n in sorted(reading.guest_errors.items()):
        guest.add_metric([h, cvm], n)
    latency = HistogramMetricFamily(
        "hostctl_probe_latency_seconds",
        "Latency of the agent's successful probes of each service.",
        labels=["host", "cvm", "service"],
    )
    failures = CounterMetricFamily(
        "hostctl_probe_failures", "Probes that failed or timed out.", labels=["host", "cvm", "service"]
    )
    for s in snap.services:
        histogram = tallies.probes.get((s.cvm, s.name), Histogram())
        latency.add_metric([h, s.cvm, s.name], histogram.buckets(), histogram.sum_s)
        failures.add_metric([h, s.cvm, s.name], tallies.probe_failures[s.cvm, s.name])
    yield from (decisions, scales, guest, latency, failures)


def _asids(snap: Snapshot, h: str) -> Iterator[Metric]:
    """SEV ASIDs (kind sev, or es for SEV-ES and SEV-SNP): the most the firmware allows (absent while unknown) and
    those running CVMs hold."""
    most = GaugeMetricFamily("hostctl_host_sev_asids", "SEV ASIDs the host allows.", labels=["host", "kind"])
    used = GaugeMetricFamily("hostctl_host_sev_asids_used", "SEV ASIDs running CVMs hold.", labels=["host", "kind"])
    facts = snap.host.confidential
    if facts is not None:
        for kind, limit, count in (
            ("sev", facts.max_guests, facts.sev_guests),
            ("es", facts.max_es_guests, facts.es_guests),
        ):
            if limit is not None:
                most.add_metric([h, kind], limit)
            used.add_metric([h, kind], count)
    yield from (most, used)


# -- serving -------------------------------------------------------------------------------------------------


class AgentCollector(Collector):
    """Reads the agent on its event loop at each scrape (bounded), builds the families on the scraping thread."""

    def __init__(self, take: Callable[[], Reading], loop: asyncio.AbstractEventLoop) -> None:
        self.take = take
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily(
            "hostctl_agent_state_readable",
            f"1 when the agent's event loop handed over its state within {COLLECT_TIMEOUT_S:g} s for this scrape.",
        )

        async def take() -> Reading:
            return self.take()

        try:
            future = asyncio.run_coroutine_threadsafe(take(), self.loop)
        except RuntimeError:  # the loop has closed: the agent is stopping
            readable.add_metric([], 0)
            yield readable
            return
        try:
            reading = future.result(COLLECT_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        yield from families(reading, time.time())


class MetricsServer:
    """prometheus-client's HTTP server on a thread of its own, serving one agent's registry."""

    def __init__(self, agent: Agent, address: tuple[str, int]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AgentCollector(lambda: read(agent), asyncio.get_running_loop()))
        ProcessCollector(registry=registry)  # the agent's own CPU seconds, memory, open files
        host, port = address
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as e:
            raise HostctlError(f"--metrics {host_port(host, port)}: cannot listen: {e.strerror or e}") from None
        self.address = host_port(host, self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        """Stop serving (blocks up to the server's poll interval: call it off the event loop)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)
