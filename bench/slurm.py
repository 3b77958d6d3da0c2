"""Slurm glue benchmark: what `conveyor slurm` adds on top of Slurm itself, on a real Slurm.

    python bench/slurm.py [--samples 20] [--tasks 200] [--max-jobs 8]

A real server (SQLite) and the Slurm glue serving one queue with a plain template (`#!/bin/bash`, `#SBATCH
--output=` in the glue's work dir, `${CLEARML_AGENT_EXECUTE}`), against the Slurm this machine runs (`.ci/slurm.sh`).

1. Latency: enqueue → the task's first printed line in its log (`events.get_task_log` polled every 20 ms), through
   the glue. The reference, measured in the same run and interleaved with it (glue, bare, glue, bare, …) so that any
   drift hits both: the task enqueued in a queue nobody serves, then a bare `sbatch` of the same script the glue
   would write, around the same command (`env CONVEYOR_SLURM_GLUE=… CLEARML_WORKER_ID=…:job-$SLURM_JOB_ID python -m
   conveyor execute --id T --require-queue`), timed from the same enqueue call. The glue's overhead is the
   difference of the medians.
2. Throughput: N short tasks (each appends its CLEARML_TASK_ID to a file and exits) through a fresh glue with
   `--max-jobs M`, from the first enqueue until every task is final: tasks per minute, completed/failed, and from
   the file that each ran exactly once. The reference, in the same run: the same N tasks' commands as one bare
   `sbatch --array=1-N%M` job array, timed the same way.

Every task's Python environment is made by the executor (uv venv, cached after the first): one warm-up task through
the glue and one bare job run before anything is measured. Jobs are cancelled at the end (this run's only: the
glue's comments name its tasks, the bare jobs carry `bench-slurm:<pid>`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import latency as timing  # noqa: E402

from agentkit import FINAL, DaemonProcess, agent_env, create_task, enqueue, make_repo  # noqa: E402
from conftest import ServerProcess  # noqa: E402

FIRST_LINE = timing.FIRST_LINE
TRAIN = f"print({FIRST_LINE!r}, flush=True)\n"
TEMPLATE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
${CLEARML_AGENT_EXECUTE}
"""
BARE_COMMENT = f"bench-slurm:{os.getpid()}"
BARE_WORKER = "bench-bare"


def counting_code(runs: Path) -> str:
    return f"import os\nopen({str(runs)!r}, 'a').write(os.environ['CLEARML_TASK_ID'] + '\\n')\n"


def execute_command(task: str) -> str:
    """The command the glue's template gets (`SlurmRuntime.execute_command`), with a worker id of our own; it is not
    `--config-file`: the glue has none either (the server's clearml.conf in HOME)."""
    cmd = shlex.join([sys.executable, "-m", "conveyor", "execute", "--id", task, "--require-queue"])
    return f'env CONVEYOR_SLURM_GLUE={BARE_WORKER} CLEARML_WORKER_ID={BARE_WORKER}:job-"$SLURM_JOB_ID" {cmd}'


class Bench:
    def __init__(self, root: Path):
        self.root = root
        self.server = ServerProcess(root / "home").start()
        self.client = self.server.client()
        self.work = root / "slurm-work"
        self.work.mkdir(parents=True)
        self.env = agent_env(self.server, root, CLEARML_AGENT__AGENT__SLURM__WORK_DIR=str(self.work),
                             CLEARML_AGENT__AGENT__SLURM__PENDING_QUEUE=f"slurm_pending_{root.name}"[-60:])
        self.tasks: set[str] = set()
        self.glues: list[DaemonProcess] = []

    def glue(self, queue: str, *args: str) -> DaemonProcess:
        template = self.root / f"{queue}.sbatch"
        template.write_text(TEMPLATE)
        glue = DaemonProcess(self.server, self.root, "--template-files", str(template), "--queue", queue,
                             "--create-queue", *args, env=self.env, command="slurm")
        self.glues.append(glue)
        return glue

    def queue(self, name: str) -> None:
        self.client.call("queues.create", {"name": name})

    def task(self, bare: Path, name: str) -> str:
        task = create_task(self.client, name=name, repository=f"file://{bare}")
        self.tasks.add(task)
        return task

    def sbatch(self, script: str, name: str) -> str:
        path = self.work / f"{name}.sbatch"
        path.write_text(script)
        done = subprocess.run(["sbatch", "--parsable", f"--comment={BARE_COMMENT}", str(path)], cwd=self.work,
                              env=self.env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"sbatch refused {path}: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    def bare_script(self, task: str) -> str:
        return f"#!/bin/bash\n#SBATCH --job-name=bare_{task}\n#SBATCH --output=bare-{task}-%j.log\n" \
               f"{execute_command(task)}\n"

    def first_line(self, task: str, sent: float) -> float:
        return timing.first_line(self.client, task, sent, 180)

    def statuses(self, tasks: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(tasks), 100):
            docs = self.client.call("tasks.get_all", {"id": tasks[i:i + 100], "only_fields": [
                "id", "status", "status_reason"], "search_hidden": True})["tasks"]
            found.update({doc["id"]: doc for doc in docs})
        return found

    def wait_all(self, tasks: list[str], timeout: float, job: str = "") -> tuple[float, dict[str, dict[str, Any]]]:
        """monotonic time when every task was final, and the tasks' last documents. With `job` (the bare array),
        also once Slurm no longer lists it: a job that died before its executor took the task leaves it queued."""
        deadline = time.monotonic() + timeout
        gone = 0.0
        while True:
            docs = self.statuses(tasks)
            if all(doc["status"] in FINAL for doc in docs.values()) and len(docs) == len(tasks):
                return time.monotonic(), docs
            if job and not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
                gone = gone or time.monotonic()
                if time.monotonic() - gone > 5:  # its last tasks' final status had time to arrive
                    return gone, docs
            if time.monotonic() > deadline:
                left = sum(doc["status"] not in FINAL for doc in docs.values())
                raise RuntimeError(f"{left} of {len(tasks)} tasks not final after {timeout:.0f} s")
            time.sleep(0.25)

    def cleanup(self) -> None:
        for glue in self.glues:
            glue.stop()
        for _ in range(2):  # again after a moment: an sbatch interrupted by a signal may still have submitted
            out = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True).stdout
            ours = [line.split("|", 1)[0] for line in out.splitlines()
                    if "|" in line and (line.split("|", 1)[1] == BARE_COMMENT
                                        or line.split("|", 1)[1].rsplit(":", 1)[-1] in self.tasks)]
            if ours:
                print(f"cancelling {len(ours)} leftover jobs: {' '.join(ours)}")
                subprocess.run(["scancel", *ours], capture_output=True)
            time.sleep(1)
        self.server.stop()


# --- 1. latency -------------------------------------------------------------------------------------------------
def through_glue(bench: Bench, bare: Path, queue: str, name: str) -> float:
    task = bench.task(bare, name)
    sent = time.monotonic()
    enqueue(bench.client, task, queue)
    return bench.first_line(task, sent)


def through_sbatch(bench: Bench, bare: Path, queue: str, name: str) -> float:
    task = bench.task(bare, name)
    sent = time.monotonic()
    enqueue(bench.client, task, queue)
    bench.sbatch(bench.bare_script(task), f"bare-{task}")
    return bench.first_line(task, sent)


def settle(bench: Bench) -> None:
    """Until none of this run's jobs is left in Slurm, so that each sample starts on an idle node."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%k"], capture_output=True, text=True).stdout.split()
        if not any(c == BARE_COMMENT or c.rsplit(":", 1)[-1] in bench.tasks for c in out):
            return
        time.sleep(0.1)


def latency(bench: Bench, samples: int) -> tuple[list[float], list[float]]:
    _, bare = make_repo(bench.root / "repo-first", {"train.py": TRAIN})
    bench.glue("bench_q")
    bench.queue("bare_q")  # nobody serves it: the bare jobs' tasks wait there
    through_glue(bench, bare, "bench_q", "warm-up glue")
    settle(bench)
    through_sbatch(bench, bare, "bare_q", "warm-up bare")
    settle(bench)
    glue: list[float] = []
    ref: list[float] = []
    for i in range(samples):
        glue.append(through_glue(bench, bare, "bench_q", f"latency-glue-{i}"))
        settle(bench)
        ref.append(through_sbatch(bench, bare, "bare_q", f"latency-bare-{i}"))
        settle(bench)
    bench.glues.pop().stop()
    return glue, ref


# --- 2. throughput ----------------------------------------------------------------------------------------------
def counted(runs: Path, tasks: list[str]) -> tuple[int, int, int]:
    """(ran once, missing, ran more than once) from the file the tasks append to."""
    seen = runs.read_text().split() if runs.exists() else []
    counts = {task: seen.count(task) for task in tasks}
    strangers = len(set(seen) - set(tasks))
    if strangers:
        print(f"  ! {strangers} unknown ids in {runs}")
    return (sum(c == 1 for c in counts.values()), sum(c == 0 for c in counts.values()),
            sum(c > 1 for c in counts.values()))


def throughput_glue(bench: Bench, count: int, max_jobs: int, timeout: float) -> dict[str, Any]:
    runs = bench.root / "runs-glue.txt"
    _, bare = make_repo(bench.root / "repo-count-glue", {"train.py": counting_code(runs)})
    bench.glue("burst_q", "--max-jobs", str(max_jobs))
    tasks = [bench.task(bare, f"burst-glue-{i}") for i in range(count)]
    queue_id = bench.client.call("queues.get_all", {"name": "^burst_q$"})["queues"][0]["id"]
    start = time.monotonic()
    for task in tasks:
        bench.client.call("tasks.enqueue", {"task": task, "queue": queue_id})
    enqueued = time.monotonic() - start
    end, docs = bench.wait_all(tasks, timeout)
    bench.glues.pop().stop()
    return {"seconds": end - start, "enqueued": enqueued, "docs": docs, "runs": counted(runs, tasks)}


def throughput_bare(bench: Bench, count: int, max_jobs: int, timeout: float) -> dict[str, Any]:
    runs = bench.root / "runs-bare.txt"
    _, bare = make_repo(bench.root / "repo-count-bare", {"train.py": counting_code(runs)})
    bench.queue("burst_bare_q")
    tasks = [bench.task(bare, f"burst-bare-{i}") for i in range(count)]
    listing = bench.work / "burst-bare-tasks.txt"
    listing.write_text("".join(f"{task}\n" for task in tasks))
    command = execute_command("$TASK").replace("'$TASK'", '"$TASK"')
    script = (f"#!/bin/bash\n#SBATCH --job-name=bare_burst\n#SBATCH --array=1-{count}%{max_jobs}\n"
              f"#SBATCH --output=bare-burst-%A_%a.log\n"
              f"TASK=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" {shlex.quote(str(listing))})\n{command}\n")
    queue_id = bench.client.call("queues.get_all", {"name": "^burst_bare_q$"})["queues"][0]["id"]
    start = time.monotonic()
    for task in tasks:
        bench.client.call("tasks.enqueue", {"task": task, "queue": queue_id})
    enqueued = time.monotonic() - start
    job = bench.sbatch(script, "bare-burst")
    end, docs = bench.wait_all(tasks, timeout, job)
    return {"seconds": end - start, "enqueued": enqueued, "docs": docs, "runs": counted(runs, tasks)}


# --- figures ----------------------------------------------------------------------------------------------------


def burst_line(name: str, result: dict[str, Any], count: int) -> str:
    statuses = [doc["status"] for doc in result["docs"].values()]
    once, missing, twice = result["runs"]
    line = (f"{name}: {count} tasks in {result['seconds']:.1f} s = {count / result['seconds'] * 60:.1f} tasks/min "
            f"(enqueueing took {result['enqueued']:.1f} s); completed {statuses.count('completed')}, "
            f"failed {statuses.count('failed')}, other {sum(s not in ('completed', 'failed') for s in statuses)}; "
            f"ran exactly once {once}, missing {missing}, more than once {twice}")
    reasons = sorted({doc.get("status_reason") or "" for doc in result["docs"].values()
                      if doc["status"] != "completed"})
    if reasons:
        line += "\n  not completed: " + "; ".join(reasons[:5])
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20, help="latency samples per side (0 skips)")
    parser.add_argument("--tasks", type=int, default=200, help="tasks in the throughput burst (0 skips)")
    parser.add_argument("--max-jobs", type=int, default=8)
    parser.add_argument("--no-reference-burst", action="store_true", help="skip the bare job array")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, `kill`: the finally below still cleans up
    nodes = subprocess.run(["sinfo", "-h", "-o", "%N %c %T"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; slurm node(s): {nodes}")
    root = Path(tempfile.mkdtemp(prefix="conveyor-slurm-"))
    bench = Bench(root)
    try:
        if args.samples:
            glue, ref = latency(bench, args.samples)
            overhead = statistics.median(glue) - statistics.median(ref)
            print("latency, enqueue -> first line in the task's log (warm environment, one warm-up each):")
            print(f"  through the glue:          {timing.spread(glue)}")
            print(f"  reference, bare sbatch:    {timing.spread(ref)}")
            print(f"  glue overhead: {overhead:+.2f} s on the median "
                  f"({statistics.median(glue) / statistics.median(ref):.2f}x the bare job)")
        if args.tasks:
            timeout = max(600.0, args.tasks * 10.0)
            print(f"throughput, {args.tasks} short tasks, first enqueue -> all final, at most {args.max_jobs} jobs:")
            print("  " + burst_line(f"through the glue (--max-jobs {args.max_jobs})",
                                    throughput_glue(bench, args.tasks, args.max_jobs, timeout), args.tasks))
            if not args.no_reference_burst:
                print("  " + burst_line(f"reference, bare sbatch --array=1-{args.tasks}%{args.max_jobs}",
                                        throughput_bare(bench, args.tasks, args.max_jobs, timeout), args.tasks))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second `kill` does not cut the cleanup short
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
