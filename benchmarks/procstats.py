"""CPU seconds and peak RSS of a system under test, read from /proc.

A system is a process group (every peer runs in its own session: nginx's workers and any
regcache worker processes share their leader's group), so figures are summed over the group.
Peak RSS is reset before each measured run by writing 5 to /proc/PID/clear_refs (Linux ≥ 4.0,
root or the same user), so VmHWM afterwards is the peak of that run alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def group_pids(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid:
            pids.append(int(name))
    return pids


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss_mib: float


class GroupMeter:
    """Measures one run of a process group: start() before it, stop() after it."""

    def __init__(self, pgid: int | None) -> None:
        self.pgid = pgid
        self._ticks: dict[int, int] = {}

    def start(self) -> None:
        if self.pgid is None:
            return
        self._ticks = {}
        for pid in group_pids(self.pgid):
            self._ticks[pid] = _cpu_ticks(pid)
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            except OSError:
                pass  # not permitted: VmHWM is then the peak since the process started

    def stop(self) -> Usage | None:
        if self.pgid is None:
            return None
        ticks = 0
        rss_kib = 0
        for pid in group_pids(self.pgid):
            ticks += _cpu_ticks(pid) - self._ticks.get(pid, 0)
            rss_kib += _status_kib(pid, "VmHWM")
        return Usage(cpu_seconds=ticks / _TICK, peak_rss_mib=rss_kib / 1024)
