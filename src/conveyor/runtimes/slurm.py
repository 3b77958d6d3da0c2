"""Running `conveyor execute` as Slurm batch jobs: the Slurm glue's runtime.

Each task becomes one `sbatch` job, its script made from the task's queue template (`slurm_script.py`). The job's
command runs the same `conveyor execute --require-queue` as every runtime, which streams the log, honours aborts and
reports the final status; the glue (`agent/slurm_glue.py`) watches the jobs from outside through one `squeue` per
look, and reads a job's end from `scontrol` (or `sacct`, once Slurm has forgotten it).

Each job carries the comment `conveyor:<glue worker id>:<task id>`, and a record under the agent folder says which
job runs which task: a glue restarted with the same worker id adopts its jobs from both, so no task is submitted twice.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.errors import TaskFailure, UserError
from conveyor.runtimes.base import Leftover, TaskRun
from conveyor.runtimes.cluster import ClusterError, ClusterJob, JobEnd, JobRecord, JobView, adopt_jobs
from conveyor.runtimes.slurm_script import JobScript, shell_word

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_SEC = 60.0
# job states in which the job is still Slurm's (COMPLETING: it ended, its processes are being cleaned up)
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
                           "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "STOPPED"})
# ends Slurm imposed on the job: the task fails with this state, whatever its executor managed to report
KILLED_STATES = frozenset({"TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
                           "DEADLINE"})
# sbatch's words when the cluster, not the job, is the trouble: the task goes back to its queue
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Zero Bytes were transmitted",
               "Slurm temporarily unable")
SQUEUE_FORMAT = "%i|%T|%r|%N|%k"  # job id, state, reason, nodes, comment (last: it may hold anything)


class SlurmError(ClusterError):
    """A Slurm command failed for a reason that is not the task's (slurmctld unreachable, a command missing)."""


@dataclass(frozen=True)
class JobState:
    """One job as Slurm reports it."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, TIMEOUT, ... (sacct's "CANCELLED by 0" is kept as CANCELLED)
    reason: str = ""  # why it waits (Resources, Priority, ...) or why it ended
    nodes: str = ""
    exit_code: str = ""  # "3:0": the script's exit code, then the signal that ended it
    elapsed: str = ""  # how long it ran, [D-]HH:MM:SS
    time_limit: str = ""

    @property
    def ended(self) -> bool:
        return self.state not in ACTIVE_STATES

    @property
    def exit_status(self) -> int:
        """The script's exit code; 128 + the signal when a signal ended it; 1 when Slurm says nothing."""
        code, _, sig = self.exit_code.partition(":")
        try:
            return 128 + int(sig) if sig and int(sig) else int(code or 1)
        except ValueError:
            return 1

    def describe_end(self) -> str:
        """What Slurm says of how the job ended: `slurm: TIMEOUT after 00:05:00`."""
        if self.state == "TIMEOUT" and self.time_limit:
            return f"slurm: TIMEOUT after {self.time_limit}"
        text = f"slurm: {self.state}"
        if self.elapsed:
            text += f" after {self.elapsed}"
        if self.exit_code and self.exit_code != "0:0":
            text += f" (exit code {self.exit_code})"
        if self.reason and self.reason not in ("None", self.state):
            text += f": {self.reason}"
        return text


def job_comment(worker: str, task_id: str) -> str:
    return f"conveyor:{worker}:{task_id}"


class SlurmCli:
    """The Slurm commands the glue uses, as subprocesses; the job list is read at most once per `refresh_sec`."""

    def __init__(self, refresh_sec: float = 1.0):
        self.refresh_sec = refresh_sec
        self._snapshot: dict[str, tuple[JobState, str]] = {}  # job id -> (state, comment)
        self._taken = 0.0
        self._changes = 0  # submits and cancels: a list read before one of them is stale
        self._seen = -1  # the count of changes the cached list has seen

    @staticmethod
    def _run(argv: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
             input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=COMMAND_TIMEOUT_SEC,
                                  env=dict(env) if env is not None else None, input=input_text, check=False)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} was not found: is Slurm's client installed on this machine?") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{argv[0]} did not answer in {COMMAND_TIMEOUT_SEC:g} s") from None

    def check(self) -> str:
        """The cluster's name and state, for the glue's banner. Raises UserError when Slurm cannot be reached."""
        try:
            done = self._run(["sinfo", "-h", "-o", "%P %a %D %T"])
        except SlurmError as exc:
            raise UserError(str(exc), hint="Run the glue where `sbatch` and `squeue` work") from None
        if done.returncode != 0:
            raise UserError(f"sinfo failed: {last_line(done.stderr)}",
                            hint="Check that slurmctld runs and this machine can reach it (munge)")
        return "; ".join(line.strip() for line in done.stdout.splitlines() if line.strip())

    def submit(self, script: Path, *, comment: str, env: Mapping[str, str], cwd: Path) -> str:
        """sbatch the script; its job id. Raises TaskFailure with sbatch's own message when it refuses the job."""
        # --no-requeue: Slurm must not run the script again (after a node failure) for a task that ran once
        done = self._run(["sbatch", "--parsable", "--no-requeue", f"--comment={comment}", "--export=ALL", str(script)],
                         cwd=cwd, env=env)
        if done.returncode != 0:
            message = last_line(done.stderr) or f"exit code {done.returncode}"
            if any(sign in message for sign in UNREACHABLE):
                raise SlurmError(f"sbatch: {message}")
            raise TaskFailure(f"sbatch refused the job: {message}")
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise TaskFailure(f"sbatch answered no job id: {done.stdout.strip()!r}")
        self._changes += 1  # the next look includes the new job
        return job_id

    def cancel(self, job_id: str) -> None:
        done = self._run(["scancel", job_id])
        if done.returncode != 0:
            log.warning("scancel %s: %s", job_id, last_line(done.stderr))
        self._changes += 1

    def jobs(self, fresh: bool = False) -> dict[str, tuple[JobState, str]]:
        """Every job Slurm still lists, with its comment: job id -> (state, comment). Cached for refresh_sec."""
        if not fresh and time.monotonic() - self._taken < self.refresh_sec and self._seen == self._changes:
            return self._snapshot
        changes = self._changes
        done = self._run(["squeue", "-h", "-a", "-t", "all", "-o", SQUEUE_FORMAT])
        if done.returncode != 0:
            raise SlurmError(f"squeue failed: {last_line(done.stderr)}")
        found: dict[str, tuple[JobState, str]] = {}
        for line in done.stdout.splitlines():
            parts = line.split("|", 4)
            if len(parts) == 5:
                job_id, state, reason, nodes, comment = parts
                found[job_id] = (JobState(job_id, state.split()[0], reason, nodes), comment)
        self._snapshot, self._taken, self._seen = found, time.monotonic(), changes
        return found

    def final_state(self, job_id: str) -> JobState | None:
        """How an ended job ended: from scontrol while slurmctld remembers it (MinJobAge), else from sacct."""
        done = self._run(["scontrol", "show", "job", "-o", job_id])
        if done.returncode == 0 and done.stdout.strip():
            fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
            state = fields.get("JobState", "")
            if state:
                return JobState(job_id, state, fields.get("Reason", ""), fields.get("NodeList", ""),
                                fields.get("ExitCode", ""), fields.get("RunTime", ""), fields.get("TimeLimit", ""))
        done = self._run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,Elapsed,Timelimit,"
                          "NodeList,Reason"])
        for line in done.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 7 and parts[0] == job_id:
                return JobState(job_id, parts[1].split()[0], parts[6], parts[5], parts[2], parts[3], parts[4])
        return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --- the runtime --------------------------------------------------------------------------------------------------
class SlurmJob(ClusterJob):
    """One task's job, watched through the runtime's shared look at squeue."""

    def __init__(self, runtime: SlurmRuntime, record: JobRecord):
        super().__init__(record)
        self.runtime = runtime

    def state(self) -> JobState | None:
        entry = self.runtime.cli.jobs().get(self.job_id)
        return entry[0] if entry else None

    def view(self) -> JobView | None:
        state = self.state()
        if state is None:
            return None
        phase = "ended" if state.ended else "pending" if state.state == "PENDING" else "running"
        return JobView(phase, state.reason if phase == "pending" else state.state.lower(), state.nodes)

    def ended(self, last: JobView | None) -> JobEnd | None:
        state = self.runtime.cli.final_state(self.job_id)
        if state is not None and not state.ended:
            return None  # squeue's list was older than the job, or slurmctld answered for a moment without it
        state = state or JobState(self.job_id, "UNKNOWN")
        return JobEnd(state.state in KILLED_STATES, state.describe_end(), state.exit_status)

    def _cancel(self) -> None:
        self.runtime.cli.cancel(self.job_id)

    def describe(self) -> str:
        return f"slurm job {self.job_id}"


class SlurmRuntime:
    """Tasks as sbatch jobs: one template per queue. `bind` gives it the queues' templates before any launch."""

    kind = "slurm"

    def __init__(self, cfg_path: str | None, *, fetch_task: Callable[[str], dict[str, Any]],
                 work_dir: Path, singularity_image: Callable[[dict[str, Any]], str] | None = None,
                 pre_setup: list[str] | None = None, post_setup: list[str] | None = None, refresh_sec: float = 1.0):
        self.cfg_path = cfg_path
        self.fetch_task = fetch_task
        self.work_dir = work_dir
        self.singularity_image = singularity_image
        self.pre_setup = list(pre_setup or [])
        self.post_setup = list(post_setup or [])
        self.cli = SlurmCli(refresh_sec)
        self.templates: dict[str, tuple[str, str]] = {}  # queue id -> (template file name, text)
        self.queue_names: dict[str, str] = {}
        self.worker = ""

    def bind(self, templates: dict[str, tuple[str, str]], queue_names: dict[str, str]) -> None:
        self.templates, self.queue_names = templates, queue_names

    def describe(self) -> str:
        return "tasks as Slurm batch jobs" + (" in Singularity" if self.singularity_image else "")

    def standby_pids(self) -> frozenset[int]:
        return frozenset()

    def drain(self) -> None:
        """Nothing is kept ready for a next task."""

    def check(self) -> str:
        return self.cli.check()

    def template_name(self, queue_id: str) -> str:
        return self.templates[queue_id][0]

    def execute_command(self, task_id: str) -> str:
        """The job's `conveyor execute`, as shell code: its worker id names the job (`<glue>:job-<id>`), and
        CONVEYOR_SLURM_GLUE tells it a signal is Slurm's, whose reason the glue reports."""
        cmd = [sys.executable, "-m", "conveyor"]
        if self.cfg_path:
            cmd += ["--config-file", self.cfg_path]
        cmd += ["execute", "--id", task_id, "--require-queue"]
        glue = shell_word(f"CONVEYOR_SLURM_GLUE={self.worker}")
        worker = shell_word(f"CLEARML_WORKER_ID={self.worker}:job-")
        return f'env {glue} {worker}"$SLURM_JOB_ID" {shlex.join(cmd)}'

    def script(self, run: TaskRun, task: dict[str, Any]) -> str:
        """The batch script of `run` from its queue's template. Raises TemplateError (a TaskFailure)."""
        name, text = self.templates[run.queue_id]
        job = JobScript(task=task, queue_id=run.queue_id, queue_name=self.queue_names.get(run.queue_id, ""),
                        worker_id=self.worker, execute=self.execute_command(run.task_id),
                        pre_setup=self.pre_setup, post_setup=self.post_setup,
                        singularity_image=self.singularity_image(task) if self.singularity_image else None)
        return job.render(text, name)

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> SlurmJob:
        record = JobRecord(run.task_id, run.queue_id, self.worker, kind=self.kind)
        record.save_quietly()  # before sbatch: a glue killed during it finds the job by its comment
        try:
            script = self.script(run, self.fetch_task(run.task_id))
            self.work_dir.mkdir(parents=True, exist_ok=True)
            path = self.work_dir / f"task-{run.task_id}.sbatch"
            path.write_text(script)
            comment = job_comment(self.worker, run.task_id)
            try:
                job_id = self.cli.submit(path, comment=comment, env={**os.environ, **env}, cwd=self.work_dir)
            except SlurmError:  # no answer is not no job: slurmctld may have taken it
                job_id = self._find(comment)
                if not job_id:
                    raise
        except BaseException:
            record.remove()
            raise
        record.job_id = job_id
        record.save_quietly()
        return SlurmJob(self, record)

    def _find(self, comment: str) -> str:
        """The active job with this comment, if Slurm lists one."""
        try:
            listed = self.cli.jobs(fresh=True)
        except SlurmError:
            return ""
        return next((job_id for job_id, (state, found) in listed.items() if found == comment and not state.ended), "")

    def adopt(self, worker: str) -> list[Leftover]:
        """The jobs a previous glue of this worker id submitted, from its records and from Slurm's job comments
        (active jobs only: the ended ones were settled)."""
        self.worker = worker
        active = {comment.rsplit(":", 1)[1]: (job_id, "") for job_id, (state, comment) in self.cli.jobs().items()
                  if comment.startswith(f"conveyor:{worker}:") and not state.ended}
        return adopt_jobs(self.kind, worker, active, lambda record: SlurmJob(self, record))
