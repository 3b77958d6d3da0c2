"""Helpers for Slurm tests: a real single-node Slurm with sacct accounting, as `.ci/slurm.sh` installs and starts it.

Without a usable Slurm the tests skip here, and fail under CI (`.ci/run` runs `.ci/slurm.sh`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import unavailable

COMMANDS = ("sinfo", "sbatch", "squeue", "scancel", "sacct")
READY_STATES = ("idle", "mixed", "allocated")
# Conveyor's jobs carry a comment starting with this; the fixture cancels those a test leaves behind
COMMENT_PREFIX = "conveyor"


def _unavailable(reason: str) -> None:
    unavailable(reason, '.ci/run must install and start it (.ci/slurm.sh)')


def require_slurm() -> None:
    """Returns when the Slurm commands exist and the node takes jobs; skips (fails under CI) otherwise."""
    missing = [cmd for cmd in COMMANDS if not shutil.which(cmd)]
    if missing:
        _unavailable(f"Slurm is not installed (no {', '.join(missing)})")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"sinfo failed: {exc}")
        return
    states = out.stdout.split()
    if out.returncode != 0 or not any(state in READY_STATES for state in states):
        _unavailable(f"no Slurm node is idle/mixed/allocated (sinfo -h -o %T: {(out.stdout + out.stderr).strip()!r})")


def active_jobs(prefix: str = COMMENT_PREFIX) -> list[str]:
    """Ids of the pending or running jobs (squeue's default states) whose comment starts with `prefix`."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, timeout=15)
    jobs = []
    for line in out.stdout.splitlines():
        job_id, _, comment = line.partition("|")
        if comment.startswith(prefix):
            jobs.append(job_id.strip())
    return jobs


def cancel_jobs(prefix: str = COMMENT_PREFIX, wait: float = 15) -> list[str]:
    """`scancel` every active job whose comment starts with `prefix`, and wait until squeue no longer lists them."""
    jobs = active_jobs(prefix)
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=15)
        deadline = time.time() + wait
        while time.time() < deadline and set(jobs) & set(active_jobs(prefix)):
            time.sleep(0.25)
    return jobs


@pytest.fixture
def slurm() -> Iterator[None]:
    """A usable Slurm; at teardown the test's leftover Conveyor jobs (comment `conveyor…`) are cancelled."""
    require_slurm()
    yield
    cancel_jobs()
