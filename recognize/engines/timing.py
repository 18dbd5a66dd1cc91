"""`StageTimer`: where a run's seconds went, per stage and per phase (the public timing hook).

Engines record each stage's time under the stage's name and the work around the stages under a
phase name (model loading, image decoding, ...); the runner adds its own phases (writing outputs,
dataset-level files, process start-up) and `summary.json` shows them all, so the parts add up to
the run's wall time. Time lost to a batch attempt that failed and was retried in smaller pieces is
recorded once, under `RETRIED`, never again under the stages (a retried batch does not make a
stage look twice as slow).

    timer = StageTimer()
    for result in engine.run(pipeline, frames, timer=timer): ...
    timer.stages            # {"ram_plus": 12.3, "grounding_dino": 40.1}
    timer.phases            # {"load": 4.2, "decode": 0.8}
    timer.overlapped        # {"load": 3.1}: loaded on a background thread meanwhile (not in the sum)
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

STARTUP = "startup"  # process start (interpreter, imports, recipe) and engine start (e.g. ray.init)
PREPARE = "prepare"  # listing the inputs and checking them against OUT (names, claims, what is done);
# for `-o URL` also opening the URL and reading and staging its manifest, journal and finished files
LOAD = "load"  # building models and reading weights (before the run, or when a stage first needs them)
LOAD_WAIT = "load_wait"  # a stage waiting for its model, still loading in the background
DECODE = "decode"  # reading and decoding images (and preparing them), or waiting for the thread that does it ahead
RELEASE = "release"  # unmapping idle models' weight pages between a chain's stages (resident_weights)
RETRIED = "retried"  # batch attempts that failed and were redone in smaller pieces
WRITE = "write"  # per-image output files
FINISH = "finish"  # dataset-level output files (COCO, ...); for `-o URL` also the last sync and upload
OTHER = "other"  # the rest of the wall time (bookkeeping, waiting on workers)
PHASES = (STARTUP, PREPARE, LOAD, LOAD_WAIT, DECODE, RELEASE, RETRIED, WRITE, FINISH, OTHER)


class StageTimer:
    """Accumulates seconds per stage and per phase; `clock` is swappable so tests need no wall clock."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.stages: dict[str, float] = defaultdict(float)
        self.phases: dict[str, float] = defaultdict(float)
        #: the clock when the first stage began (cold start = that minus the run's start), or None
        self.first_stage_at: float | None = None
        #: seconds of work that ran beside the rest on another thread (models loaded in the
        #: background, `recognize.engines.background_load`): not part of the wall-time parts
        self.overlapped: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (recorded even when the block raises)."""
        start = self.clock()
        if self.first_stage_at is None:
            self.first_stage_at = start
        try:
            yield
        finally:
            self.stages[name] += self.clock() - start

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name` (one of `PHASES`, or a name of your own)."""
        start = self.clock()
        try:
            yield
        finally:
            self.phases[name] += self.clock() - start

    def child(self) -> StageTimer:
        """An empty timer on the same clock: an attempt's seconds, merged or written off later."""
        return StageTimer(self.clock)

    @property
    def total(self) -> float:
        return sum(self.stages.values()) + sum(self.phases.values())

    def merge(self, other: StageTimer | Mapping[str, Mapping[str, float]], scale: float = 1.0) -> None:
        """Add another timer's seconds (or its `to_dict()`, e.g. sent back by a Ray worker)."""
        data = other.to_dict() if isinstance(other, StageTimer) else other
        if isinstance(other, StageTimer):  # a child on the same clock
            self._note_first_stage(other)
        for name, seconds in data.get("stages", {}).items():
            self.stages[name] += seconds * scale
        for name, seconds in data.get("phases", {}).items():
            self.phases[name] += seconds * scale
        for name, seconds in data.get("overlapped", {}).items():
            self.overlapped[name] += seconds * scale

    def write_off(self, attempt: StageTimer) -> None:
        """Record a failed attempt's whole time once, as `RETRIED`."""
        self.phases[RETRIED] += attempt.total
        self._note_first_stage(attempt)  # a stage did begin, even if the attempt failed

    def _note_first_stage(self, child: StageTimer) -> None:
        first = child.first_stage_at
        if first is not None and (self.first_stage_at is None or first < self.first_stage_at):
            self.first_stage_at = first

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"stages": dict(self.stages), "phases": dict(self.phases), "overlapped": dict(self.overlapped)}

    def wall(self, seconds: float) -> dict[str, float]:
        """Phases plus all stages (as `stages`) plus `other`, adding up to `seconds` of wall time.

        With workers in parallel (Ray) stage and load seconds are summed over workers, so they may
        exceed the wall time; `other` is then 0.
        """
        parts = {name: self.phases.get(name, 0.0) for name in PHASES if name != OTHER}
        parts.update({name: value for name, value in self.phases.items() if name not in parts})
        parts["stages"] = sum(self.stages.values())
        parts[OTHER] = max(0.0, seconds - sum(parts.values()))
        return {name: round(value, 4) for name, value in parts.items()}


def seconds_since_process_start() -> float | None:
    """Seconds since this process was created (Linux /proc), or None where that cannot be read.

    The CLI passes it to the runner so `summary.json` shows interpreter start-up and imports too.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks since boot
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)
