"""The real-hypervisor tier: the lab site's QEMU guests under libvirtd, booted once for this package's tests.

The lab comes up on the first test that asks for it and goes down after the last test of this package; its
teardown checks that nothing is left (no domain, no QEMU, no agent, no daemon the lab started).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import lab as labkit


@pytest.fixture(scope="package")
def lab() -> Iterator[labkit.LabSite]:
    """The running lab; always taken down, its domains removed even when a test fails."""
    site = labkit.start()
    try:
        yield site
        labkit.stop_and_check(site)
    finally:
        labkit.sweep(site.runtime, site.prefix)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is in the `lab` tier (`-m lab` selects it; `make test` runs it)."""
    for item in items:
        if "tests/real/" in str(item.path):
            item.add_marker(pytest.mark.lab)
