"""A calibration of one CVM: steady open-loop rates replayed against it held at fixed vCPU counts, each cell's p50/p99,
errors and the mean requests in flight the agent read (pure data; measured by `hostctl.experiments.elastic_calibration`,
read by the oracle in `hostctl.experiments.elastic_oracle` and by the `calibrated` elastic policy).

A cell is within the SLO when its p99 is at most the SLO and no request failed.

The need at a measured rate is the fewest vCPUs of a cell within the SLO at that rate, or at any lower measured rate
if more (more load never needs fewer vCPUs; this keeps a lucky cell from lowering it). Between two measured rates the
need is interpolated linearly and rounded up; below the lowest it is the lowest's. Above the highest measured rate,
or where no cell at a rate is within the SLO, the need is max vCPUs and says so (`beyond`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hostctl.config import build, check, non_negative, positive
from hostctl.errors import ConfigError


@dataclass(frozen=True)
class Cell:
    """One calibration measurement: `rps` for `seconds` against `vcpus` online vCPUs."""

    rps: float = check(positive)
    vcpus: int = check(positive)
    seconds: float = check(positive)
    requests: int = check(non_negative)
    errors: int = check(non_negative)
    p50_ms: float = check(non_negative)
    p99_ms: float = check(non_negative)
    concurrency: float | None = None  # mean requests in flight or queued, as the agent read it

    def within(self, slo_ms: float) -> bool:
        return self.requests > 0 and self.errors == 0 and self.p99_ms <= slo_ms


@dataclass(frozen=True)
class Calibration:
    """Every cell measured on one CVM (`target`, boot/max vCPUs) against one SLO."""

    target: str
    boot: int = check(positive)
    max: int = check(positive)
    slo_ms: float = check(positive)
    cells: list[Cell] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return sorted({c.rps for c in self.cells})

    def fewest(self, rps: float) -> int | None:
        """The fewest vCPUs of a cell within the SLO at exactly `rps`; None when none is."""
        return min((c.vcpus for c in self.cells if c.rps == rps and c.within(self.slo_ms)), default=None)

    def need(self, rps: float) -> tuple[int, bool]:
        """(vCPUs that keep p99 within the SLO at `rps`, whether that is beyond what was measured: max is taken)."""
        envelope: list[tuple[float, int | None]] = []
        most = self.boot
        for rate in self.rates:
            fewest = self.fewest(rate)
            if fewest is None or (envelope and envelope[-1][1] is None):
                envelope.append((rate, None))
            else:
                most = max(most, fewest)
                envelope.append((rate, most))
        if not envelope or rps > envelope[-1][0] + 1e-9:
            return self.max, True
        lower = [(r, n) for r, n in envelope if r <= rps + 1e-9]
        if not lower:
            first = envelope[0][1]
            return (self.max, True) if first is None else (first, False)
        rate, n = lower[-1]
        if n is None:
            return self.max, True
        if abs(rate - rps) <= 1e-9:
            return n, False
        upper_rate, upper_n = next((r, m) for r, m in envelope if r > rps + 1e-9)
        if upper_n is None:
            return self.max, True
        return math.ceil(n + (upper_n - n) * (rps - rate) / (upper_rate - rate) - 1e-9), False

    def capacity(self) -> list[float | None]:
        """Per online vCPU count from 1 to max: the most requests in flight the agent read in a cell within the
        SLO at that count (None where no such cell has a reading)."""
        out: list[float | None] = []
        for n in range(1, self.max + 1):
            loads = [c.concurrency for c in self.cells if c.vcpus == n and c.within(self.slo_ms) and c.concurrency]
            out.append(max(loads) if loads else None)
        return out

    def to_json(self) -> str:
        """The calibration as JSON; a cell with no reading of requests in flight has no `concurrency` key."""
        data = asdict(self)
        data["cells"] = [{k: v for k, v in c.items() if v is not None} for c in data["cells"]]
        return json.dumps(data, indent=1) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rps", "vcpus", "seconds", "requests", "errors", "p50_ms", "p99_ms", "concurrency", "within"])
        for c in sorted(self.cells, key=lambda c: (c.rps, c.vcpus)):
            concurrency = "" if c.concurrency is None else f"{c.concurrency:.2f}"
            within = "yes" if c.within(self.slo_ms) else "no"
            latency = (f"{c.p50_ms:.1f}", f"{c.p99_ms:.1f}")
            writer.writerow(
                [f"{c.rps:g}", c.vcpus, f"{c.seconds:g}", c.requests, c.errors, *latency, concurrency, within]
            )
        return out.getvalue()

    def save(self, out: Path, stem: str) -> tuple[Path, Path]:
        """Write `stem.json` (what `load` reads back) and `stem.csv` (one row per cell) into `out`."""
        out.mkdir(parents=True, exist_ok=True)
        js, table = out / f"{stem}.json", out / f"{stem}.csv"
        js.write_text(self.to_json())
        table.write_text(self.to_csv())
        return js, table


def load(path: Path) -> Calibration:
    """A calibration saved by `Calibration.save`; ConfigError naming the file and field when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a calibration is JSON)") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON: {e}") from None
    calibration = build(Calibration, data, source=str(path))
    if not calibration.cells:
        raise ConfigError(f"{path}: cells: no cells measured")
    if calibration.max < calibration.boot:
        raise ConfigError(f"{path}: max: {calibration.max} is below boot {calibration.boot}")
    for i, cell in enumerate(calibration.cells):
        if not calibration.boot <= cell.vcpus <= calibration.max:
            raise ConfigError(f"{path}: cells[{i}].vcpus: {cell.vcpus} is outside boot..max")
    return calibration
