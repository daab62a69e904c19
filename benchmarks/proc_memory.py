"""A process's memory as Linux reports it in ``/proc``: the fields the memory benchmarks read and reset."""

from __future__ import annotations

from pathlib import Path


def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A memory field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in kB; None where the process has no
    such field (an exited process not yet reaped has no memory lines)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_hwm() -> None:
    """Reset this process's ``VmHWM`` (its peak resident set) to its current resident set."""
    Path("/proc/self/clear_refs").write_text("5")
