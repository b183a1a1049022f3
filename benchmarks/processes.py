"""Memory and CPU of the benchmark's own child processes, read from /proc (Linux; no psutil)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def rss_mib(pid: int) -> float | None:
    """Resident memory (VmRSS) in MiB, or None when the process is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)  # reported in kB
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def children(pid: int) -> list[int]:
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    return found


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        for child in children(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def tree_rss_mib(pid: int) -> float | None:
    """The process and everything it started (the worker's template render processes, say)."""
    own = rss_mib(pid)
    if own is None:
        return None
    return round(own + sum(rss_mib(child) or 0.0 for child in descendants(pid)), 1)


def child_named(name: str, parent: int | None = None) -> int | None:
    """A direct child of ``parent`` (this process by default) by command name: the dev server is ``temporal``."""
    for child in children(parent or os.getpid()):
        try:
            if (PROC / str(child) / "comm").read_text().strip() == name:
                return child
        except FileNotFoundError:
            continue
    return None


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime, every thread


def stop_process(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM (a worker finishes the task in hand and exits 0), then SIGKILL after ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
