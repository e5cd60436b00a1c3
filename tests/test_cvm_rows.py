"""The CVM rows' cache: a row is rebuilt only when its CVM's record, its host's staleness or its mark changed, and
every row is the one a build without the cache gives, update after update as a link applies them."""

from __future__ import annotations

import msgspec

from dittotui.tables.cvms import RowCache, cvm_rows
from hostctl.client.link import HostLink, LinkState
from hostctl.client.site import Defaults, HostEntry
from hostctl.wire.decode import Update
from hostctl.wire.model import CVM, DomainState, Host, Snapshot
from hostctl.wire.security import SecurityType


def cvm(name: str, online: int = 2, cpu: float = 10.0) -> CVM:
    return CVM(name, f"uuid-{name}", DomainState.RUNNING, SecurityType.SEV_SNP, 0x30000, 1, 8, online, cpu_percent=cpu)


def fresh_link(*cvms: CVM) -> HostLink:
    link = HostLink(HostEntry(name="mec-1", socket="/nonexistent.sock"), Defaults())
    link.snapshot = Snapshot(host=Host("mec-1", "test:///x", 8, 4096), cvms=list(cvms))
    link.state = LinkState.FRESH
    return link


def test_rows_are_kept_for_unchanged_records_and_always_equal_a_fresh_build() -> None:
    link = fresh_link(cvm("a"), cvm("b"), cvm("c"))
    cache = RowCache()
    first = cvm_rows(link, cache=cache)
    assert first == cvm_rows(link) and len(cache.rows) == 3

    link._on_notification("update", Update(seq=2, cvms={"b": cvm("b", online=3, cpu=55.0)}))
    second = cvm_rows(link, cache=cache)
    assert second == cvm_rows(link)
    assert second["mec-1/a"] is first["mec-1/a"] and second["mec-1/c"] is first["mec-1/c"]
    assert second["mec-1/b"] is not first["mec-1/b"] and second["mec-1/b"][3][0] == 2  # 3 online: 2 workers
    assert second["mec-1/b"][1] is first["mec-1/b"][1] and second["mec-1/b"][2] is first["mec-1/b"][2]  # unchanged

    marked = cvm_rows(link, marks={"mec-1/c"}, cache=cache)
    assert marked["mec-1/c"][0] is True and marked["mec-1/a"] is second["mec-1/a"]

    link.state = LinkState.STALE  # every row shows its host stale
    stale = cvm_rows(link, cache=cache)
    assert stale == cvm_rows(link) and all(row[1][1] is True for row in stale.values())


def test_rows_of_cvms_gone_leave_the_cache() -> None:
    link = fresh_link(cvm("a"), cvm("b"))
    cache = RowCache()
    cvm_rows(link, cache=cache)
    link._on_notification("update", Update(seq=2, removed=["a"]))
    assert cvm_rows(link, cache=cache).keys() == {"mec-1/b"} and cache.rows.keys() == {"mec-1/b"}


def test_a_filter_skips_rows_without_losing_the_others() -> None:
    link = fresh_link(cvm("web"), cvm("db"))
    cache = RowCache()
    assert cvm_rows(link, filter_text="web", cache=cache).keys() == {"mec-1/web"}
    db = next(c for c in link.snapshot.cvms if c.name == "db")  # type: ignore[union-attr]
    link._on_notification("update", Update(seq=2, cvms={"db": msgspec.structs.replace(db, cpu_percent=70.0)}))
    assert cvm_rows(link, cache=cache) == cvm_rows(link)
