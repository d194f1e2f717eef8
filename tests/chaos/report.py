"""The chaos run's plan (``ChaosPlan``), its faults as they happened (``Fault``), its stall
rule (``Progress``) and what it reports (``ChaosReport``: the findings, what the faults did to
arrays, recoveries and throughput, as lines to print)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.chaos.checks import Findings
from tests.chaos.long_jobs import LongFindings
from tests.chaos.targets import ArrayHits


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int = 200
    tenants: int = 3
    workers: int = 3  # one is killed only while another one is ready
    concurrency: int = 2
    calm_fraction: float = 0.2  # of all jobs SUCCEEDED before the first fault
    worker_kill_every_s: float = 4.0
    # and only once this many more jobs SUCCEEDED since the last worker kill: a kill costs the
    # jobs it held a lease expiry, so on a fast machine (workers back in 2 s) kills every 4 s
    # alone would starve the run instead of testing it
    jobs_between_worker_kills: int = 5
    fault_gap_s: float = 2.0  # pause after a fault recovered, before the next one
    down_s: float = 3.0  # how long a restarted server stays away
    trickle_s: float = 0.1  # pace of each of the 4 clients submitting during the faults
    quiet_timeout_s: float = 600.0
    # no job finishing for this long ends a wait at once (a hung service, not a slow
    # machine): the run then fails on its findings within minutes instead of at the timeout
    stall_s: float = 180.0
    migrations: int = 3  # in flight when the datamover is killed (one per tenant)
    kill_until: float = 0.9  # workers are killed until this fraction of the jobs SUCCEEDED


class Progress:
    """Whether a count stopped rising: ``stalled(value, now)`` is true once ``value`` has not
    gone above its best for ``stall_s``."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.best: float | None = None
        self.since = time.monotonic()

    def stalled(self, value: float, now: float) -> bool:
        if self.best is None or value > self.best:
            self.best, self.since = value, now
        return now - self.since > self.stall_s


@dataclass
class Fault:
    name: str
    started: float  # epoch seconds
    ended: float = 0.0  # the server is back / the process was killed
    recovered: float | None = None  # first job completion after ``ended``

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.started


@dataclass
class ChaosReport:
    plan: ChaosPlan
    findings: Findings
    faults: list[Fault] = field(default_factory=list)
    hits: ArrayHits = field(default_factory=ArrayHits)
    long_jobs: LongFindings = field(default_factory=LongFindings)  # long_jobs.check
    calm_jobs_per_s: float = 0.0
    fault_jobs_per_s: float = 0.0
    calm_window_s: float = 0.0
    fault_window_s: float = 0.0
    quiet_after_s: float = 0.0
    total_s: float = 0.0

    @property
    def throughput_ratio(self) -> float:
        return self.fault_jobs_per_s / self.calm_jobs_per_s if self.calm_jobs_per_s else 0.0

    def recovery(self) -> dict[str, float | None]:
        """The longest recovery per kind of fault (None: no job completed after it)."""
        kinds: dict[str, list[float | None]] = {}
        for f in self.faults:
            kinds.setdefault(f.name.split("#")[0], []).append(f.recovery_s)
        return {
            kind: None if None in times else max(t for t in times if t is not None)
            for kind, times in kinds.items()
        }

    def lines(self) -> list[str]:
        f = self.findings
        kills = sum(1 for x in self.faults if x.name.startswith("kill -9 worker"))
        out = [
            f"jobs submitted {f.submitted}, final {f.final}, SUCCEEDED {f.succeeded}, "
            f"lost {f.lost}, stored {f.stored}, by state {f.by_state}",
            f"attempts {f.attempts} ({f.attempts - f.submitted} retried after faults); "
            f"usage rows {f.usage_rows}: uncounted {f.usage_missing}, extra {f.usage_extra}",
            f"jobs with two outcomes: {len(f.double_outcomes)}; different results for the "
            f"same inputs: {len(f.inconsistent_results)}; outputs missing: "
            f"{len(f.outputs_missing)}",
            f"outbox {f.outbox}; dead letters {f.dead_letters or 0}; "
            f"messages waiting {f.waiting_messages or 0}; migrations {f.migrations}",
            *f.arrays.lines(),
            *self.long_jobs.lines(),
            *self.hits.lines(),
            f"faults: {kills} worker kills, then "
            + ", ".join(x.name for x in self.faults if not x.name.startswith("kill -9 worker")),
        ]
        for kind, r in self.recovery().items():
            shown = "never" if r is None else f"{r:.1f} s"
            worst = max(
                (f for f in self.faults if f.name.split("#")[0] == kind),
                key=lambda f: f.recovery_s or 0.0,
            )
            if r is not None and worst.ended - worst.started >= 0.5:
                # a server restart: how much of it was the restart itself
                shown += f" (the restart took {worst.ended - worst.started:.1f} s)"
            out.append(f"  recovery (fault -> next job completion), {kind}: {shown}")
        out.append(
            f"throughput without faults {self.calm_jobs_per_s:.1f} jobs/s "
            f"({self.calm_window_s:.0f} s), during faults {self.fault_jobs_per_s:.1f} jobs/s "
            f"({self.fault_window_s:.0f} s): ratio {self.throughput_ratio:.2f}"
        )
        out.append(
            f"quiet {self.quiet_after_s:.0f} s after the last fault; run {self.total_s:.0f} s"
        )
        return out
