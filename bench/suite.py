"""How long `make test` takes here, and on a machine with a quarter of this one's CPU: the same command run
again inside a Linux cgroup whose CPU quota is a quarter of this machine's cores (the machines this suite runs
on differ up to ~4x in speed; its goal is 10 minutes on the slowest). Each run records its wall time, the CPU
time of everything it started and pytest's summary line.

A quota is not a slower CPU: the processes run at full speed for a quarter of each 100 ms period and then wait,
so a quick wait for a server can last a whole period. Where no cgroup can be made (not root, no cgroup cpu
controller), only the unthrottled run is recorded and the report says so.

`python bench/suite.py [--fraction 0.25] [--target test]`; `--fraction 1`, on a machine of the slow kind, times
the suite there alone. With BENCH_QUICK=1 the runs take two test modules only (QUICK_TESTS), to check the
script in a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PROJECT_ROOT, QUICK, WORK, save, say

PERIOD_US = 100_000
QUICK_TESTS = "tests/test_config.py tests/test_data.py"
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


def make_cgroup(fraction: float) -> Path | None:
    """A cgroup limited to `fraction` of this machine's CPUs, or None where none can be made."""
    cores = os.cpu_count() or 1
    quota = int(PERIOD_US * cores * fraction)
    name = f"shrinkflow-suite-{os.getpid()}"
    if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        group, limits = CGROUP_V1 / name, {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota)}
    elif (CGROUP_V2 / "cgroup.controllers").exists():
        group, limits = CGROUP_V2 / name, {"cpu.max": f"{quota} {PERIOD_US}"}
    else:
        say("no cgroup cpu controller here; only the unthrottled run is measured")
        return None
    try:
        group.mkdir()
        for setting, value in limits.items():
            (group / setting).write_text(value)
    except OSError as exc:
        say(f"no cgroup with a CPU quota here ({exc}); only the unthrottled run is measured")
        if group.exists():
            remove_cgroup(group)
        return None
    return group


def run_make(target: str, group: Path | None, log: Path) -> dict:
    """`make <target>` (inside `group` when given): wall seconds, CPU seconds of every process it waited for,
    pytest's summary line."""
    enter = f"echo $$ > {group / 'cgroup.procs'} && " if group else ""  # its children inherit the cgroup
    if QUICK:  # pytest takes test paths from PYTEST_ADDOPTS as from its command line
        enter += f"export PYTEST_ADDOPTS='{QUICK_TESTS}' && "
    before = time.perf_counter()
    usage = os.times()
    with log.open("w") as out:
        proc = subprocess.run(["bash", "-c", f"{enter}exec make --no-print-directory {target}"], cwd=PROJECT_ROOT,
                              stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - before
    after = os.times()
    cpu = after.children_user - usage.children_user + after.children_system - usage.children_system
    summary = [line.strip("= ") for line in log.read_text().splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return {"wall_s": wall, "cpu_s": cpu,
            "exit_code": proc.returncode, "pytest": summary[-1] if summary else "no pytest summary", "log": str(log)}


def remove_cgroup(group: Path) -> None:
    try:
        group.rmdir()
    except OSError as exc:  # a process still inside it
        say(f"could not remove cgroup {group}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.25, help="share of this machine's CPU for the slow run")
    parser.add_argument("--target", default="test", choices=("test", "test-slow"), help="the make target to time")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be above 0 and at most 1, got {args.fraction:g}")
    logs = WORK / "suite"
    logs.mkdir(parents=True, exist_ok=True)
    say(f"make {args.target}, unthrottled")
    runs = {"full": run_make(args.target, None, logs / "full.log")}
    say(f"make {args.target}: {runs['full']['wall_s']:.0f} s, {runs['full']['pytest']}")
    group = make_cgroup(args.fraction) if args.fraction < 1 else None  # 1: this machine is the slow one
    if group:
        say(f"make {args.target} with {args.fraction:g} of the CPU (cgroup {group})")
        try:
            runs["throttled"] = run_make(args.target, group, logs / "throttled.log")
        finally:
            remove_cgroup(group)
        say(f"make {args.target}, throttled: {runs['throttled']['wall_s']:.0f} s, {runs['throttled']['pytest']}")
    save("suite", {"target": args.target, "fraction": args.fraction, "cores": os.cpu_count(), "runs": runs,
                   "command": f"python bench/suite.py --fraction {args.fraction:g} --target {args.target}"})


if __name__ == "__main__":
    main()
