"""The console's trends keep a CVM's samples as the points where its values changed: what they give back equals
keeping every sample of every update, over the last SAMPLES updates of its host."""

from __future__ import annotations

import random
from collections import deque

import pytest

from dittotui import trends
from dittotui.trends import Trends
from hostctl.wire.model import CVM, DomainState

WINDOW = 20  # small, so that the runs below cross it many times


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trends, "SAMPLES", WINDOW)


def record(name: str, workers: int | None, cpu: float | None) -> CVM:
    return CVM(name, name, DomainState.RUNNING, online_vcpus=None if workers is None else workers + 1, cpu_percent=cpu)


@pytest.mark.parametrize("seed", range(20))
def test_change_points_give_every_sample_of_the_window(seed: int) -> None:
    """Updates as the console sees them: some records replaced (only those passed), and when CVMs come or go, all
    of them passed; against keeping each update's sample of every CVM ever seen (None: no sample)."""
    rng = random.Random(seed)
    kept = Trends()
    every: dict[str, deque[tuple[int, int] | None]] = {}
    current: dict[str, CVM] = {}
    for step in range(150):
        changed, came_or_went = [], step == 0
        for name in "abcdef":
            if name in current and rng.random() < 0.05:
                del current[name]
                came_or_went = True
            elif (name in current and rng.random() < 0.3) or (name not in current and rng.random() < 0.1):
                came_or_went |= name not in current
                workers = None if rng.random() < 0.1 else rng.randint(0, 4)
                current[name] = record(name, workers, rng.choice([None, 5.4, 20.0, 97.6]))
                changed.append(current[name])
        if came_or_went or rng.random() < 0.2:  # a reconnect, a filter or a mark also give the whole host
            kept.record_all("mec-1", list(current.values()))
        else:
            kept.record("mec-1", changed)
        for name in every.keys() | current.keys():
            cvm = current.get(name)
            known = cvm is not None and cvm.workers_active is not None and cvm.cpu_percent is not None
            sample = (cvm.workers_active, round(cvm.cpu_percent)) if known else None  # type: ignore[union-attr,arg-type]
            every.setdefault(name, deque(maxlen=WINDOW)).append(sample)
        for name, samples in every.items():
            series = kept.of(f"mec-1/{name}")
            known_samples = [s for s in samples if s is not None]
            assert list(zip(series.workers, series.cpu, strict=True)) == known_samples, (step, name)


def test_a_cvm_gone_for_a_window_is_forgotten_and_an_unknown_host_has_nothing() -> None:
    kept = Trends()
    kept.record_all("mec-1", [record("a", 1, 1.0), record("b", 2, 2.0)])
    for _ in range(WINDOW + 1):
        kept.record_all("mec-1", [record("a", 1, 1.0)])
    assert kept.of("mec-1/a").workers == [1] * WINDOW
    assert "b" not in kept.hosts["mec-1"] and kept.of("mec-1/b").workers == []
    assert kept.of("mec-2/a").cpu == []
