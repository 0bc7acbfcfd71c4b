"""What Linux says of a process in /proc, for the benches and tests: the standard library only,
so a light tool (bench.first_step's workers, tests/test_leak.py) can read it without bench.load's
playwright or bench.run's torch."""

from __future__ import annotations


def kib(pid: int | str, file: str, *keys: str) -> dict[str, int]:
    """The kB values of ``keys`` ("Pss", "VmRSS", ...) in /proc/PID/FILE ("smaps_rollup",
    "status"; PID may be "self"): those the file has; {} where it cannot be read (not Linux,
    the process gone)."""
    wanted, out = {f"{k}:" for k in keys}, {}
    try:
        with open(f"/proc/{pid}/{file}") as f:
            for line in f:
                parts = line.split()  # "VmRSS:\t  81236 kB"
                if parts and parts[0] in wanted:
                    out[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    return out
