"""What the security-overhead experiment runs and what each run measured: the plan (rounds, scripts, connection
counts, wrk's settings, the shuffle's seed), the CVM chosen per security type, and one measurement per wrk run."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hostctl.errors import HostctlError
from hostctl.load import wrk
from hostctl.load.generators import Target
from hostctl.load.wrk import Params, WrkResult
from hostctl.wire.security import SecurityType

ORDER = (SecurityType.NONE, SecurityType.SEV, SecurityType.SEV_ES, SecurityType.SEV_SNP)
LABEL = {
    SecurityType.NONE: "plain",
    SecurityType.SEV: "SEV",
    SecurityType.SEV_ES: "SEV-ES",
    SecurityType.SEV_SNP: "SEV-SNP",
}
PERCENTILES = (50, 90, 99)
MIN_ROUNDS = 2  # an interval needs at least two rounds


def new_seed() -> int:
    """A fresh seed for a shuffled order."""
    return random.SystemRandom().randrange(1 << 31)


@dataclass(frozen=True)
class Plan:
    """Rounds of wrk runs: in each round every security type runs once per script and connection count."""

    scripts: tuple[str, ...] = wrk.SCRIPTS
    connections: tuple[int, ...] = (8,)
    rounds: int = 5
    threads: int = 2
    duration_s: int = 5
    timeout_s: int = 2
    seed: int = field(default_factory=new_seed)  # of the shuffled order, written in the report so it can be re-run

    def __post_init__(self) -> None:
        if not self.scripts or len(set(self.scripts)) != len(self.scripts):
            raise HostctlError(f"scripts {','.join(self.scripts) or '(none)'}: name each shipped script at most once")
        if not self.connections or len(set(self.connections)) != len(self.connections):
            raise HostctlError(
                f"connections {','.join(map(str, self.connections)) or '(none)'}: give each count at most once"
            )
        if type(self.rounds) is not int or not MIN_ROUNDS <= self.rounds <= 1000:
            raise HostctlError(f"rounds = {self.rounds!r} must be a whole number from {MIN_ROUNDS} to 1000")
        for script in self.scripts:
            for connections in self.connections:
                self.params(script, connections)  # wrk's own checks, with the value named

    def params(self, script: str, connections: int) -> Params:
        """One run's wrk parameters (threads never above the connections: wrk needs one connection per thread)."""
        return Params(min(self.threads, max(connections, 1)), connections, self.duration_s, self.timeout_s, script)

    def blocks(self) -> list[tuple[str, int]]:
        """Every (script, connections) pair, in the order reports list them."""
        return [(s, c) for s in self.scripts for c in sorted(self.connections)]

    def describe(self) -> str:
        return (
            f"wrk -t{self.threads} -d{self.duration_s}s --timeout {self.timeout_s}s, "
            f"scripts {', '.join(self.scripts)}, connections {', '.join(map(str, sorted(self.connections)))}"
        )


@dataclass(frozen=True)
class Choice:
    """The CVM measured for one security type."""

    security: SecurityType
    vcpus: int
    target: Target

    @property
    def cvm(self) -> str:
        return f"{self.target.host}/{self.target.cvm}"


@dataclass(frozen=True)
class Measurement:
    """One wrk run of the experiment."""

    round: int  # 1-based
    order: int  # 1-based position in the whole experiment
    script: str
    connections: int
    choice: Choice
    started: float
    result: WrkResult
    excluded: str = ""  # why this run is left out of the statistics; empty when it counts


def parse_scripts(text: str) -> tuple[str, ...]:
    """`home-timeline,mixed` (or `all`) as shipped script names; HostctlError naming an unknown one."""
    if text.strip() == "all":
        return wrk.SCRIPTS
    names = tuple(s.strip() for s in text.split(","))
    for name in names:
        wrk.check_script(name)
    return names


def parse_connections(text: str) -> tuple[int, ...]:
    """`1,4,16,64` as connection counts; HostctlError naming a value that is not a whole number >= 1."""
    counts = []
    for part in text.split(","):
        try:
            counts.append(int(part.strip()))
        except ValueError:
            raise HostctlError(f"--connections {text}: {part.strip()!r} is not a whole number") from None
    return tuple(counts)
