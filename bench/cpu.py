"""CPU time of groups of processes over a measurement, from ``/proc`` (Linux).

A group is a function that names its root processes now; each root counts with all its
descendants (a worker's kernel processes, say). Processes that start during the measurement
count from zero; processes that end during it are lost (short-lived PostgreSQL backends), so
figures are lower bounds. Off Linux every figure is 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

Roots = Callable[[], Iterable[int]]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, user+system ticks) of a process, None when it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    name = raw[raw.find("(") + 1 : raw.rfind(")")]
    fields = raw[raw.rfind(")") + 2 :].split()
    return name, int(fields[1]), int(fields[11]) + int(fields[12])


def _table() -> dict[int, tuple[str, int, int]]:
    table: dict[int, tuple[str, int, int]] = {}
    if not PROC.is_dir():
        return table
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                table[int(entry.name)] = st
    return table


def named(*names: str) -> Roots:
    """Every process whose command name is one of ``names`` (``postgres``, ``beam.smp``)."""

    def roots() -> list[int]:
        return [pid for pid, (name, _, _) in _table().items() if name in names]

    return roots


def pids(*values: int) -> Roots:
    return lambda: list(values)


def _machine_busy() -> int:
    """Busy ticks of the whole machine (all CPUs) since boot."""
    try:
        fields = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle


class CpuMeter:
    """``start()``, run something, ``stop()`` -> CPU seconds per group, plus ``machine``:
    the whole machine's busy CPU seconds (what the groups leave out is other load).

    Groups in ``flat`` count their root processes only, not their descendants (the benchmark's
    own process, whose children are measured as groups of their own)."""

    def __init__(self, groups: dict[str, Roots], *, flat: Iterable[str] = ()) -> None:
        self.groups = groups
        self.flat = set(flat)
        self._start: dict[str, dict[int, int]] = {}
        self._busy = 0

    def _snapshot(self) -> dict[str, dict[int, int]]:
        table = _table()
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        snap: dict[str, dict[int, int]] = {}
        for group, roots in self.groups.items():
            ticks: dict[int, int] = {}
            pending = [pid for pid in roots() if pid in table]
            while pending:
                pid = pending.pop()
                if pid in ticks:
                    continue
                ticks[pid] = table[pid][2]
                if group not in self.flat:
                    pending.extend(children.get(pid, []))
            snap[group] = ticks
        return snap

    def start(self) -> None:
        self._start = self._snapshot()
        self._busy = _machine_busy()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        out: dict[str, float] = {}
        for group, ticks in end.items():
            before = self._start.get(group, {})
            out[group] = sum(t - before.get(pid, 0) for pid, t in ticks.items()) / TICK
        out["machine"] = (_machine_busy() - self._busy) / TICK
        return out


def per_item_ms(cpu: dict[str, float], items: int) -> dict[str, float]:
    """CPU milliseconds per request / job for each group."""
    return {k: v * 1000 / items for k, v in cpu.items()} if items else {}


def describe(cpu: dict[str, float], items: int, elapsed_s: float) -> str:
    """``gateway 4.10 ms (0.62 core), ...`` largest first, then what the groups leave out
    (other load on the machine: the benchmark's figures are noisier when it is high)."""
    if not items or elapsed_s <= 0:
        return "-"
    groups = sorted(((k, v) for k, v in cpu.items() if k != "machine"), key=lambda kv: -kv[1])
    parts = [f"{k} {v * 1000 / items:.2f} ms ({v / elapsed_s:.2f} core)" for k, v in groups]
    machine = cpu.get("machine", 0.0)
    others = max(0.0, machine - sum(v for _, v in groups))
    parts.append(f"anything else {others * 1000 / items:.2f} ms ({others / elapsed_s:.2f} core)")
    return ", ".join(parts) + f"; whole machine {machine / elapsed_s:.2f} of {os.cpu_count()} cores"
