"""A host's doctor report: one line per check, with what was found and, when it is not ok, what to do."""

from __future__ import annotations

import time
from enum import StrEnum

import msgspec

from hostctl.wire.model import Model

BOUND_S = 20.0  # an agent answers a doctor request within this long, whatever libvirt or a guest does


class Status(StrEnum):
    """A check's outcome. Only FAIL fails the report: WARN is a limit worth knowing (e.g. SNP off on a host where no
    SNP CVM is defined), EMULATED a check the demo or the lab does not need (no SEV hardware), N/A one that does not
    apply (e.g. a socket's permissions on an agent serving stdio)."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    EMULATED = "emulated"
    NA = "n/a"


class Check(Model):
    """One check: what it looked at, its outcome, what was found, and one line of advice when it is not ok."""

    name: str
    status: Status
    detail: str
    advice: str = ""


class Report(Model):
    """Every check of one host, and why the host is emulated when it is (the demo's test driver, the lab's guests)."""

    host: str
    checks: list[Check] = msgspec.field(default_factory=list)
    emulated: str = ""
    ts: float = msgspec.field(default_factory=time.time)

    @property
    def passed(self) -> bool:
        """True when no check failed (warnings, emulated and n/a checks do not fail a host)."""
        return all(c.status is not Status.FAIL for c in self.checks)

    def count(self, status: Status) -> int:
        return sum(c.status is status for c in self.checks)
