"""The security-overhead experiment's statistics: per script and connection count, per security type, the median
latency over rounds with its bootstrap interval, the increase over plain from the same rounds (paired), and the
warnings a reader needs when rounds disagree widely."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hostctl.experiments import bootstrap
from hostctl.experiments.bootstrap import Interval
from hostctl.experiments.overhead_runs import LABEL, MIN_ROUNDS, ORDER, PERCENTILES, Choice, Measurement
from hostctl.wire.security import SecurityType

SPREAD = 1.5  # rounds disagree widely when a type's slowest round is this many times its fastest
FLIP = 10.0  # ... or when one round puts a type this many percent above plain and another this many below


@dataclass(frozen=True)
class Line:
    """One security type in one block: its counted rounds, median latency and increase over plain per percentile."""

    choice: Choice
    rounds: tuple[int, ...]
    latency: dict[int, Interval | None]  # ms; None with fewer than MIN_ROUNDS rounds
    increase: dict[int, Interval | None]  # percent over plain; None for plain itself or when it cannot be paired
    why_no_increase: str
    rps: float  # median over rounds
    requests: int
    errors: int

    @property
    def label(self) -> str:
        return LABEL[self.choice.security]


@dataclass(frozen=True)
class Block:
    """The runs of one script at one connection count."""

    script: str
    connections: int
    lines: list[Line]

    @property
    def title(self) -> str:
        return f"{self.script}, {self.connections} connection{'s' * (self.connections != 1)}"


@dataclass
class Analysis:
    blocks: list[Block] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def analyse(
    measurements: Sequence[Measurement],
    blocks: Sequence[tuple[str, int]],
    *,
    resamples: int = bootstrap.RESAMPLES,
    seed: int = 0,
) -> Analysis:
    """The statistics of the counted measurements, block by block in the order of `blocks`."""
    draws: dict[int, list[list[int]]] = {}

    def drawn(n: int) -> list[list[int]]:
        if n not in draws:
            draws[n] = bootstrap.draws(n, resamples=resamples, seed=seed)
        return draws[n]

    analysis = Analysis()
    for script, connections in blocks:
        runs = [m for m in measurements if m.script == script and m.connections == connections and not m.excluded]
        by_type: dict[SecurityType, dict[int, Measurement]] = {}
        for m in runs:
            by_type.setdefault(m.choice.security, {})[m.round] = m
        plain = by_type.get(SecurityType.NONE, {})
        block = Block(script, connections, [_line(by_type[s], plain, drawn) for s in ORDER if s in by_type])
        if block.lines:
            analysis.blocks.append(block)
            analysis.warnings += _disagreement(block, by_type, plain)
    return analysis


def _line(
    runs: dict[int, Measurement],
    plain: dict[int, Measurement],
    drawn: Callable[[int], list[list[int]]],
) -> Line:
    rounds = tuple(sorted(runs))
    first = runs[rounds[0]]
    latency: dict[int, Interval | None] = {}
    increase: dict[int, Interval | None] = {}
    paired = [r for r in rounds if r in plain]
    why = ""
    if first.choice.security is SecurityType.NONE:
        why = "plain is the base"
    elif not plain:
        why = "no plain run to compare with"
    elif len(paired) < MIN_ROUNDS:
        why = f"{len(paired)} round{'s' * (len(paired) != 1)} with plain, {MIN_ROUNDS} needed"
    elif any(plain[r].result.p(q) <= 0 for r in paired for q in PERCENTILES):
        why = "plain measured 0 ms in a round"
    for q in PERCENTILES:
        values = [runs[r].result.p(q) for r in rounds]
        latency[q] = bootstrap.median_interval(values, drawn(len(values))) if len(values) >= MIN_ROUNDS else None
        mine, base = [runs[r].result.p(q) for r in paired], [plain[r].result.p(q) for r in paired]
        increase[q] = None if why else bootstrap.increase_interval(mine, base, drawn(len(paired)))
    return Line(
        choice=first.choice,
        rounds=rounds,
        latency=latency,
        increase=increase,
        why_no_increase=why,
        rps=bootstrap.median([runs[r].result.rps for r in rounds]),
        requests=sum(runs[r].result.requests for r in rounds),
        errors=sum(runs[r].result.errors for r in rounds),
    )


def _disagreement(
    block: Block, by_type: dict[SecurityType, dict[int, Measurement]], plain: dict[int, Measurement]
) -> list[str]:
    """At most one warning for the block: the series whose rounds spread widely, and the types whose rounds
    disagree on being slower or faster than plain (none with fewer than MIN_ROUNDS rounds)."""
    spreads, flips = [], []
    for line in block.lines:
        runs = by_type[line.choice.security]
        for q in PERCENTILES:
            values = [runs[r].result.p(q) for r in line.rounds]
            if len(values) >= MIN_ROUNDS and min(values) > 0 and max(values) / min(values) > SPREAD:
                spreads.append(
                    f"{line.label} p{q} {min(values):.1f}-{max(values):.1f} ms ({max(values) / min(values):.1f}x)"
                )
            if line.choice.security is not SecurityType.NONE:
                ups = [
                    (runs[r].result.p(q) / plain[r].result.p(q) - 1) * 100
                    for r in line.rounds
                    if r in plain and plain[r].result.p(q) > 0
                ]
                if len(ups) >= MIN_ROUNDS and max(ups) >= FLIP and min(ups) <= -FLIP:
                    flips.append(f"{line.label} p{q} from {min(ups):+.0f}% to {max(ups):+.0f}% over plain")
    said = []
    if spreads:
        said.append(f"slowest round over {SPREAD:g}x the fastest: {', '.join(spreads)}")
    if flips:
        said.append(f"rounds disagree on the sign: {', '.join(flips)}")
    return [f"rounds disagree widely in {block.title}: {'; '.join(said)}"] if said else []
