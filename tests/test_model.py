"""The host model survives JSON both ways, is never walked by the garbage collector, and policies decode into named
flags."""

from __future__ import annotations

import gc
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostctl.wire import decode
from hostctl.wire.model import CVM, DomainState, Elastic, Event, Host, Service, Snapshot
from hostctl.wire.security import SecurityType, decode_policy

names = st.text(min_size=1, max_size=20)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe_bool = st.none() | st.booleans()

hosts = st.builds(
    Host,
    name=names,
    uri=names,
    cpus=st.integers(1, 512),
    memory_mib=st.integers(1, 1 << 22),
    cpu_percent=floats,
    load=st.none() | floats,
    sev=maybe_bool,
    sev_es=maybe_bool,
    sev_snp=maybe_bool,
    libvirt_version=st.text(max_size=10),
)
elastics = st.builds(
    Elastic,
    policy=names,
    enabled=st.booleans(),
    decision=st.text(max_size=12),
    reason=st.text(max_size=40),
    ts=st.none() | floats,
    alert=st.booleans(),
)
cvms = st.builds(
    CVM,
    name=names,
    uuid=names,
    state=st.sampled_from(DomainState),
    security=st.sampled_from(SecurityType),
    policy=st.integers(0, (1 << 64) - 1),
    boot_vcpus=st.integers(1, 8),
    max_vcpus=st.integers(1, 64),
    online_vcpus=st.integers(0, 64),
    driver=names,
    cpu_percent=floats,
    scaled_by=st.text(max_size=10),
    scaled_at=st.none() | floats,
    concurrency=st.none() | floats,
    rps=st.none() | floats,
    elastic=st.none() | elastics,
)
services = st.builds(Service, name=names, cvm=names, url=names)
snapshots = st.builds(
    Snapshot, host=hosts, cvms=st.lists(cvms, max_size=5), services=st.lists(services, max_size=5), ts=floats
)
events = st.builds(
    Event,
    host=names,
    cvm=names,
    action=names,
    who=names,
    ok=st.booleans(),
    before=st.none() | st.integers(0, 64),
    after=st.none() | st.integers(0, 64),
    why=st.text(max_size=40),
    ts=floats,
)


@given(snapshots)
def test_snapshot_round_trips_through_json(snapshot: Snapshot) -> None:
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


@given(elastics)
def test_elastic_state_round_trips_through_json(elastic: Elastic) -> None:
    assert Elastic.from_json(elastic.to_json()) == elastic


def test_a_cvm_carries_its_elastic_state_as_a_nested_object() -> None:
    cvm = CVM(
        name="a",
        uuid="u",
        state=DomainState.RUNNING,
        elastic=Elastic(policy="slo", enabled=True, decision="up 2→3", reason="p99 80 ms > 50 ms", ts=1.5),
    )
    data = cvm.to_dict()
    assert data["elastic"]["decision"] == "up 2→3" and data["concurrency"] is None
    assert type(CVM.from_dict(data).elastic) is Elastic
    assert CVM.from_dict({k: v for k, v in data.items() if k != "elastic"}).elastic is None  # an older agent


@given(events)
def test_event_round_trips_through_json(event: Event) -> None:
    assert Event.from_json(event.to_json()) == event


def test_enums_travel_as_their_names() -> None:
    cvm = CVM(name="a", uuid="u", state=DomainState.RUNNING, security=SecurityType.SEV_SNP)
    data = cvm.to_dict()
    assert data["state"] == "running" and data["security"] == "sev-snp"
    assert type(CVM.from_dict(data).security) is SecurityType


def test_workers_are_the_vcpus_beyond_the_boot_set() -> None:
    cvm = CVM(name="a", uuid="u", state=DomainState.RUNNING, boot_vcpus=2, max_vcpus=10, online_vcpus=5)
    assert (cvm.workers_active, cvm.workers_max) == (3, 8)


def test_snp_default_policy_decodes_to_named_flags() -> None:
    assert decode_policy(SecurityType.SEV_SNP, 0x30000) == ["smt-allowed", "reserved-1"]
    assert decode_policy(SecurityType.SEV_SNP, 0x80000 | 0x30000 | 0x0105) == [
        "abi>=1.5",
        "smt-allowed",
        "reserved-1",
        "debug-allowed",
    ]


def test_sev_policy_decodes_to_named_flags() -> None:
    assert decode_policy(SecurityType.SEV_ES, 0x7) == ["no-debug", "no-key-sharing", "es-required"]
    assert decode_policy(SecurityType.SEV, 1 << 40) == ["bit-40"]
    assert decode_policy(SecurityType.NONE, 0xFF) == []


@given(snapshots)
def test_records_from_the_wire_are_not_tracked_by_the_garbage_collector(snapshot: Snapshot) -> None:
    """A console takes in thousands of records a second: none of them may add to the collector's passes."""
    params = {"seq": 1, "cvms": {c.name: c.to_dict() for c in snapshot.cvms}, "host": snapshot.host.to_dict()}
    line = json.dumps({"jsonrpc": "2.0", "method": "update", "params": params}).encode()
    notified = decode.notification(line, decode.LINK)
    assert notified is not None
    update = notified[1]
    read = Snapshot.from_dict(snapshot.to_dict())
    records = [update, update.host, *update.cvms.values(), read, read.host, *read.cvms, *read.services]
    records += [c.elastic for c in [*read.cvms, *update.cvms.values()] if c.elastic is not None]
    assert not any(gc.is_tracked(r) for r in records)


def test_a_malformed_record_is_refused_naming_the_field() -> None:
    good = CVM("web", "u-1", DomainState.RUNNING).to_dict()
    with pytest.raises(ValueError, match=r"online_vcpus"):
        CVM.from_dict({**good, "online_vcpus": "three"})
    with pytest.raises(ValueError, match=r"state"):
        CVM.from_dict({**good, "state": "melted"})
