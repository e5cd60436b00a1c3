"""The `update` diff: each update carries what changed since the last one sent to the same subscription."""

from __future__ import annotations

from msgspec.structs import replace

from hostctl.agent.updates import UpdateDiff
from hostctl.wire.model import CVM, DomainState, Event, Host, Service, Snapshot


def snapshot(*cvms: CVM, cpu: float = 10.0, services: tuple[Service, ...] = ()) -> Snapshot:
    return Snapshot(Host("h", "test:///default", cpus=8, memory_mib=1024, cpu_percent=cpu), list(cvms), list(services))


def test_first_update_carries_everything_then_only_changes() -> None:
    a, b = CVM("a", "u-a", DomainState.RUNNING), CVM("b", "u-b", DomainState.RUNNING)
    svc = Service("web", "a", "http://a/")
    diff = UpdateDiff()
    first = diff.next(snapshot(a, b, services=(svc,)), [])
    assert first["seq"] == 1 and set(first["cvms"]) == {"a", "b"} and first["removed"] == [] and first["events"] == []
    assert first["host"]["cpu_percent"] == 10.0 and first["services"] == [svc.to_dict()]
    quiet = diff.next(snapshot(a, b, services=(svc,)), [])
    assert quiet["seq"] == 2 and quiet["cvms"] == {} and "host" not in quiet and "services" not in quiet
    event = Event("h", "b", "scale", "me", ok=True, before=1, after=2)
    scaled = diff.next(snapshot(a, replace(b, online_vcpus=2), cpu=20.0, services=(svc,)), [event])
    assert scaled["cvms"] == {"b": replace(b, online_vcpus=2).to_dict()} and scaled["events"] == [event.to_dict()]
    assert scaled["host"]["cpu_percent"] == 20.0 and "services" not in scaled
    gone = diff.next(snapshot(a, cpu=20.0), [])
    assert gone["removed"] == ["b"] and gone["cvms"] == {} and gone["services"] == []
    assert UpdateDiff().next(snapshot(a), [])["seq"] == 1  # a new subscription starts over
