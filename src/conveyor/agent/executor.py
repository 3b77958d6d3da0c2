"""One task from start to final status: what `conveyor execute --id T` does, on bare metal or in a container.

Phases, each logged to the task with its duration: setup script, git checkout (clone cache), uncommitted diff,
Python environment (venv cache), then the entry point. While it runs: output shipped as log events, the
task's status watched for an abort, a ping now and then. At the end: the final status with its reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from conveyor.agent import abort_callbacks
from conveyor.agent.ahead import Ahead
from conveyor.agent.entry_point import entry_argv, entry_dir, entry_file, task_python_version, with_python
from conveyor.agent.folders import venvs_dir
from conveyor.agent.logs import MAX_EVENT_BYTES, LogShipper, decode_output
from conveyor.agent.process import become_subreaper, die_with_parent, end_orphans, kill_tree
from conveyor.agent.timeline import PULLED_AT_ENV, Timeline
from conveyor.client.caller import ApiCaller
from conveyor.client.errors import ApiCallError
from conveyor.config import Config
from conveyor.env.managers.base import scrub
from conveyor.errors import ConveyorError, TaskFailure
from conveyor.protocol.failure import FIELD as FAILURE_CLASS
from conveyor.protocol.failure import FailureClass, of_fetch, parse, shown
from conveyor.protocol.status import FINAL_VALUES, STOPPING, TaskStatus, changed_by

if TYPE_CHECKING:
    from conveyor.env.python import PythonEnv

log = logging.getLogger(__name__)

# statuses someone else set while the task ran (a final one, or queued again): the task is no longer ours to end
SET_ELSEWHERE = FINAL_VALUES | {TaskStatus.queued.value}
# Set in images made by `conveyor build --docker`: the task's code and python are baked in, nothing is cloned or
# installed when the task runs.
PREBUILT_CODE_ENV = "CONVEYOR_PREBUILT_CODE"
PREBUILT_PYTHON_ENV = "CONVEYOR_PREBUILT_PYTHON"
PREBUILT_TASK_ENV = "CONVEYOR_PREBUILT_TASK"  # the task they were built for: any other task is set up as usual
# what the agent knows and the task must not: its API secret and git password (the task gets a session token)
AGENT_SECRETS = frozenset({"CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY", "TRAINS_API_ACCESS_KEY",
                           "TRAINS_API_SECRET_KEY", "CLEARML_AGENT_GIT_PASS", "TRAINS_AGENT_GIT_PASS"})
PUMP_CHUNK_BYTES = 64 * 1024
PUMP_DRAIN_SEC = 2.0  # reading what is left in the pipe after the task's tree has ended


@dataclass
class ExecuteOptions:
    task_id: str
    clone: bool = False
    worker_id: str = ""  # under a daemon, the daemon's; standalone, <host>:<pid>
    under_daemon: bool = False  # the daemon reports the worker's status; we only run the task
    gpus: str | None = None  # NVIDIA_VISIBLE_DEVICES for the task; "none" = CPU only; None = as inherited
    git_user: str | None = None
    git_pass: str | None = None
    require_queue: bool = False
    cluster_glue: bool = False  # run in a Slurm or Kubernetes job a glue made (CONVEYOR_SLURM_GLUE, CONVEYOR_K8S_GLUE)
    rank: int = 0  # a multi-node job's rank (SLURM_PROCID / RANK): only rank 0 changes the task's status
    echo: bool = True  # also print the task's output on our stdout
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    status: TaskStatus | None  # completed | failed | stopped | None (someone else changed it: no status call)
    reason: str
    exit_code: int | None = None
    failure_class: FailureClass = FailureClass.task  # of a failed one: may another try succeed?


# how a final status reads at the end of the task's log, and the call that sets it
END_LINES = {TaskStatus.completed: "Process completed successfully", TaskStatus.failed: "Process failed: {}",
             TaskStatus.stopped: "Process aborted: {}"}
END_CALLS = {TaskStatus.completed: "tasks.completed", TaskStatus.failed: "tasks.failed",
             TaskStatus.stopped: "tasks.stopped"}


class Executor:
    def __init__(self, client: ApiCaller, cfg: Config, opts: ExecuteOptions):
        self.client = client
        self.cfg = cfg
        self.opts = opts
        self.worker = opts.worker_id or f"{cfg.get('agent.worker_name') or socket.gethostname()}:{os.getpid()}"
        self.task_id = opts.task_id
        self.status_message = changed_by(f"conveyor {self.worker}")  # on every status this executor sets
        # rank > 0 of a multi-node job: runs the entry point beside rank 0, its output in the log with its rank in
        # front; it never changes the task's status, reports no worker and only follows an abort
        self.follower = opts.rank > 0
        self.logs: LogShipper | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._abort: Outcome | None = None
        self._shutdown = threading.Event()
        self._done = threading.Event()
        self.work_dir: Path | None = None
        self.timings: dict[str, float] = {}
        self.timeline = Timeline()  # sent with the final status
        self._code_ahead: Ahead[str | None] | None = None  # the checkout begun while the start is reported
        self._task_env: dict[str, str] | None = None  # the entry point's environment and folder, once it runs
        self._task_cwd: Path | None = None

    # --- public ---------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the task; returns 0 when it completed, 1 otherwise."""
        self.timeline.mark("started")
        become_subreaper()  # whatever the task leaves behind stays ours to end
        self._install_signal_handlers()
        try:
            task = self._start(checkout_ahead=True)
        except BaseException:
            self._drop_code_ahead()
            raise
        if task is None:
            return 1
        outcome = Outcome(TaskStatus.failed, "internal error", failure_class=FailureClass.infrastructure)
        try:
            outcome = self._execute(task)
        except TaskFailure as exc:
            outcome = Outcome(TaskStatus.failed, str(exc), failure_class=parse(exc.failure_class) or FailureClass.task)
            self.notice(f"conveyor: {exc}", "error")
        except Exception as exc:  # a bug of ours must still end the task with a status and a reason
            log.exception("task %s", self.task_id)
            outcome = Outcome(TaskStatus.failed, f"agent error: {exc.__class__.__name__}: {exc}",
                              failure_class=FailureClass.infrastructure)  # not the user's code
            self.notice(f"conveyor: agent error: {exc.__class__.__name__}: {exc}", "error")
        finally:
            self._finish(outcome)
        return 0 if outcome.status == TaskStatus.completed else 1

    def notice(self, msg: str, level: str = "info") -> None:
        if self.follower:
            msg = self._ranked(msg)
        if self.logs is not None:
            self.logs.notice(msg, level)
        if self.opts.echo:  # the task's log, followed on the terminal too
            sys.stdout.write(msg + "\n")
            sys.stdout.flush()

    def _ranked(self, text: str) -> str:
        """Rank > 0: each line with the rank in front, as the reference shows other nodes' output."""
        return "".join(f"RANK {self.opts.rank}: {line}" for line in text.splitlines(keepends=True))

    # --- start ----------------------------------------------------------------------------------------------------
    def _start(self, checkout_ahead: bool = False) -> dict[str, Any] | None:
        """The task, started by this run (None: not to be run); with `checkout_ahead`, its code is checked out
        meanwhile (the checkout needs none of these calls) and taken by `_execute`."""
        call = self.client.call
        task = call("tasks.get_by_id", {"task": self.task_id})["task"]
        self._mark_pickup(task)
        if self.opts.clone:
            new = call("tasks.clone", {"task": self.task_id, "new_task_name": f"Clone of {task.get('name', '')}"})
            self.task_id = new["id"]
            task = call("tasks.get_by_id", {"task": self.task_id})["task"]
        self.logs = LogShipper(self.client, self.task_id, self.worker,
                               flush_interval=float(self.cfg.get("agent.log_flush_interval_sec")),
                               max_bytes=int(self.cfg.get("agent.log_buffer_max_bytes")),
                               suppress_carriage_return=bool(self.cfg.get("agent.suppress_carriage_return")))
        if self.opts.clone:
            self.notice(f"conveyor: running task {self.task_id} (a clone of {self.opts.task_id})")
        if self.follower:
            return self._follow_rank_zero(task)
        if checkout_ahead:
            self._code_ahead = self._checkout_ahead(task)
        if not self.opts.clone:
            dequeued = call("tasks.dequeue", {"task": self.task_id, "new_status": TaskStatus.in_progress.value})
            # --require-queue (a glue's job): this run must be the one that took the task out of its queue, so that
            # a second job for the same task, or one started after an abort, runs nothing
            took_it = int(dequeued.get("updated") or 0) >= 1 and (
                not self.opts.require_queue or int(dequeued.get("dequeued") or 0) >= 1)
            if took_it:
                call("tasks.started", {"task": self.task_id, "force": True, "status_reason": "starting execution soon",
                                       "status_message": ""})
            elif self.opts.require_queue:
                self.notice(f"conveyor: task {self.task_id} was not queued; --require-queue refuses to run it",
                            "error")
                self._close_logs()
                return None
        call("tasks.started", {"task": self.task_id, "force": True, "status_reason": "worker started execution",
                               "status_message": self.status_message})
        if not self.opts.under_daemon:
            self._report(task_running=True)
        if not task.get("script"):
            self.notice("conveyor: the task has no script section (repository, entry point): nothing to run", "error")
            self._finish(Outcome(TaskStatus.failed, "can not run task without script information"))
            return None
        return task

    def _checkout_ahead(self, task: dict[str, Any]) -> Ahead[str | None] | None:
        """The task's code checked out in a thread while its start is reported; not where a refusal may follow
        (--require-queue: another run of the task may hold its folder), nor after a setup script (what it exports
        reaches git) or in a prebuilt image (nothing is checked out)."""
        script = task.get("script")
        if not script or self.opts.require_queue or self._setup_script(task) \
                or prebuilt_environment(self.opts.task_id) is not None:
            return None
        self.work_dir = self._task_work_dir()
        return Ahead(lambda: self._prepare_code(script, self._fresh_work_dir() / "code"), "checkout")

    def _drop_code_ahead(self) -> None:
        """A start that failed: the checkout begun meanwhile is waited for (its git must not be cut off mid-write)
        and its folder removed, since nothing will run it."""
        ahead, self._code_ahead = self._code_ahead, None
        if ahead is None:
            return
        with contextlib.suppress(BaseException):
            ahead.result()
        if self.work_dir is not None and not self.cfg.get("agent.keep_work_dirs"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _mark_pickup(self, task: dict[str, Any]) -> None:
        """When the task was enqueued (its status history) and pulled (by our daemon, which says when)."""
        if self.opts.clone:
            return  # a clone made here was never queued
        self.timeline.enqueued_from(task)
        with contextlib.suppress(ValueError):
            self.timeline.mark("pulled", float(os.environ.get(PULLED_AT_ENV) or "x"))

    def _follow_rank_zero(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """Rank > 0: wait until rank 0 has started the task (it dequeues it), then run it too; give up if the task
        ends or leaves its queue first."""
        deadline = time.monotonic() + float(self.cfg.get("agent.rank_start_timeout_sec"))
        while True:
            found = self.client.call("tasks.get_all", {"id": [self.task_id], "only_fields": ["status"],
                                                       "search_hidden": True})["tasks"]
            status = found[0].get("status") if found else None
            if status == TaskStatus.in_progress:
                break
            if status != TaskStatus.queued or time.monotonic() > deadline or self._shutdown.is_set():
                self.notice(f"conveyor: rank {self.opts.rank}: the task is {status or 'gone'}; not running it",
                            "warning")
                self._close_logs()
                return None
            time.sleep(0.5)
        self.notice(f"conveyor: rank {self.opts.rank} of the task starts on {socket.gethostname()}")
        return task if task.get("script") else None

    # --- phases ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        self.notice(f"conveyor: {name} ...")
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.timings[name] = took
            self.notice(f"conveyor: {name} done in {took:.2f} s")
        if self._abort is not None:
            raise _Aborted()

    def _execute(self, task: dict[str, Any]) -> Outcome:
        """The phases, in order; an abort seen at a phase boundary ends it with the abort's outcome."""
        script: dict[str, Any] = task.get("script") or {}
        ahead, self._code_ahead = self._code_ahead, None
        if ahead is None:
            self.work_dir = self._fresh_work_dir()
        code_dir = self._task_work_dir() / "code"
        watcher = threading.Thread(target=self._watch, name="abort-watch", daemon=True)
        watcher.start()
        recorded: Ahead[None] | None = None
        try:
            prebuilt = prebuilt_environment(self.opts.task_id)
            if prebuilt is not None:
                return self._run_prebuilt(task, script, *prebuilt)
            setup = self._setup_script(task)
            if setup:
                with self.phase("setup shell script"):
                    self._run_setup_script(setup)
            commit = ahead.result() if ahead is not None else self._prepare_code(script, code_dir)
            self.timeline.mark("code_ready")
            # recorded while the environment is made, and on the task before its code runs (as the reference has it)
            if commit:
                recorded = Ahead(lambda: self._record_commit(commit), "record-commit")
            working_dir = (code_dir / (script.get("working_dir") or ".")).resolve()
            if not working_dir.is_dir() or code_dir.resolve() not in (working_dir, *working_dir.parents):
                raise TaskFailure(f"working directory {script.get('working_dir')!r} does not exist in the repository")
            argv = entry_argv(task, self.cfg, working_dir, self.notice)  # before the install: a wrong one fails fast
            env = self._build_environment(script, code_dir, working_dir)
            self.timeline.mark("environment_ready")
            try:
                if recorded is not None:
                    recorded.result()  # a failed edit fails the task, as it did before the environment was made
                if self.follower:
                    return self._run_task(with_python(argv, env.python), working_dir, code_dir, task)
                self._mark_running_entry_point()
                return self._run_task(with_python(argv, env.python), working_dir, code_dir, task,
                                      lambda: self._report_requirements(script, env))
            finally:
                env.release()
        except _Aborted:
            return self._abort or Outcome(TaskStatus.stopped, "aborted")
        finally:
            if recorded is not None:  # its edit ends before the task's end is reported
                with contextlib.suppress(BaseException):
                    recorded.result()
            self._done.set()

    def _task_work_dir(self) -> Path:
        return venvs_dir(self.cfg) / "tasks" / (self.task_id + (f"-rank{self.opts.rank}" if self.follower else ""))

    def _fresh_work_dir(self) -> Path:
        work_dir = self._task_work_dir()
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        return work_dir

    @staticmethod
    def _setup_script(task: dict[str, Any]) -> str:
        return str((task.get("container") or {}).get("setup_shell_script") or "").strip()

    def _prepare_code(self, script: dict[str, Any], code_dir: Path) -> str | None:
        """The task's code in `code_dir`: its repository checked out with the uncommitted diff applied, or the script
        stored in the task itself. Returns the commit checked out when the task named none (to record on it)."""
        from conveyor.env import vcs

        repository = (script.get("repository") or "").strip()
        if not repository:
            if not (script.get("diff") or "").strip():
                raise TaskFailure("the task has neither a repository nor a script (diff) to run")
            code_dir.mkdir(parents=True, exist_ok=True)
            vcs.write_standalone_script(code_dir, entry_file(script), script["diff"])
            return None
        commit = script.get("version_num") or None
        with self.phase(f"git checkout of {scrub(repository)}"):
            try:
                checkout = vcs.prepare_repository(
                    repository, code_dir, branch=script.get("branch") or None, tag=script.get("tag") or None,
                    commit=commit, auth=vcs.GitAuth.from_config(self.cfg, self.opts.git_user, self.opts.git_pass),
                    cfg=self.cfg, log=self.notice)
            except vcs.VcsError as exc:
                # unreachable: the network's fault; a commit or branch that does not exist: the task's
                raise TaskFailure(f"failed cloning repository: {exc}", failure_class=of_fetch(str(exc))) from None
        diff = script.get("diff") or ""
        if diff.strip():
            with self.phase("apply uncommitted diff"):
                try:
                    vcs.apply_diff(code_dir, diff, log=self.notice)
                except vcs.VcsError as exc:
                    raise TaskFailure(f"failed applying the uncommitted diff: {exc}") from None
        return checkout.commit if not commit and not self.follower else None

    def _record_commit(self, commit: str | None) -> None:
        """The commit a task that named none ran, on the task (in this thread: after its start was reported)."""
        if commit:
            self.client.call("tasks.edit", {"task": self.task_id, "force": True, "script": {"version_num": commit}})

    def _build_environment(self, script: dict[str, Any], code_dir: Path, working_dir: Path) -> PythonEnv:
        from conveyor.env import python as pyenv

        with self.phase("python environment"):
            try:
                reqs = pyenv.resolve_requirements(script.get("requirements"), code_dir, cfg=self.cfg,
                                                  entry_dir=entry_dir(script, working_dir), log=self.notice)
                return pyenv.build_environment(reqs, cfg=self.cfg,
                                               python_version=task_python_version(self.cfg, script) or reqs.python,
                                               work_dir=code_dir, log=self.notice)
            except pyenv.EnvBuildError as exc:
                # an index unreachable or the worker's set-up: infrastructure; a requirement that does not exist: the
                # task's (managers/base.py reads the installer's output)
                raise TaskFailure(f"failed building the python environment: {exc}",
                                  failure_class=exc.failure_class) from None

    def _mark_running_entry_point(self) -> None:
        if self._abort is not None:  # a forced `started` would take an aborted (perhaps re-enqueued) task back
            raise _Aborted()
        self.client.call("tasks.started", {"task": self.task_id, "force": True,
                                           "status_reason": "worker starting task execution",
                                           "status_message": self.status_message})

    def _run_prebuilt(self, task: dict[str, Any], script: dict[str, Any], code_dir: Path, python: Path) -> Outcome:
        """Run the entry point with the code and python that `conveyor build` baked into this image."""
        if not python.exists() or not code_dir.is_dir():
            raise TaskFailure(f"the prebuilt environment is missing ({PREBUILT_CODE_ENV}={code_dir}, "
                              f"{PREBUILT_PYTHON_ENV}={python}): rebuild the image with `conveyor build`")
        self.notice(f"conveyor: using the prebuilt code in {code_dir} and {python}; no checkout, no install")
        working_dir = (code_dir / (script.get("working_dir") or ".")).resolve()
        if not working_dir.is_dir():
            raise TaskFailure(f"working directory {script.get('working_dir')!r} does not exist in the prebuilt code")
        argv = with_python(entry_argv(task, self.cfg, working_dir, self.notice), python)
        if not self.follower:
            self._mark_running_entry_point()
        return self._run_task(argv, working_dir, code_dir, task)

    def _run_setup_script(self, text: str) -> None:
        """Run the task's setup shell script. It is sourced, as the reference runs it in the shell that then starts
        the task: what it exports reaches the environment build and the task, in venv and container mode alike."""
        assert self.work_dir is not None
        path = self.work_dir / "setup.sh"
        path.write_text(text + "\n")
        dumped = self.work_dir / "setup-env"
        shell = "bash" if shutil.which("bash") else "sh"  # a container image may have only a POSIX shell
        # what the sourced script exported: the environment of a process the shell starts after it
        wrapper = f". {shlex.quote(str(path))} || exit $?\nexec cat /proc/self/environ > {shlex.quote(str(dumped))}\n"
        proc = subprocess.Popen([shell, "-c", wrapper], cwd=self.work_dir, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
        code = self._follow(proc)
        self.proc = None
        if code != 0 and self._abort is None:
            raise TaskFailure(f"the setup shell script failed with exit code {code}")
        self._apply_setup_environment(dumped)

    def _apply_setup_environment(self, dumped: Path) -> None:
        try:
            raw = dumped.read_bytes()
        except OSError:
            return
        after = dict(item.split("=", 1) for item in raw.decode("utf-8", "surrogateescape").split("\0") if "=" in item)
        shell_own = {"_", "SHLVL", "PWD", "OLDPWD"}
        changed = sorted(k for k, v in after.items() if k not in shell_own and os.environ.get(k) != v)
        removed = sorted(k for k in os.environ if k not in after and k not in shell_own)
        for key in changed:
            os.environ[key] = after[key]
        for key in removed:
            os.environ.pop(key, None)
        if changed or removed:  # names only: values may be secrets
            self.notice(f"conveyor: the setup script set {', '.join(changed) or 'nothing'}"
                        + (f" and unset {', '.join(removed)}" if removed else "") + " for the task")

    def _report_requirements(self, script: dict[str, Any], env: PythonEnv) -> None:
        """What the environment holds, on the task (as the reference reports it): a clone installs the same."""
        from conveyor.env import python as pyenv

        try:
            frozen = pyenv.freeze(env)
        except pyenv.EnvBuildError as exc:  # the task can run all the same
            log.warning("task %s: not reporting its requirements: %s", self.task_id, exc)
            return
        requirements = dict(script.get("requirements") or {})
        # The user's own list moves to org_pip on the first run only: a clone's re-run installs the frozen list,
        # and must not replace the original with it (reference §3.4).
        original = requirements.get("org_pip") or requirements.get("pip")
        body = {**{k: v for k, v in requirements.items() if k in ("conda", "org_conda", "conda_env_json")},
                "pip": frozen}
        if original:
            body["org_pip"] = original if isinstance(original, str) else "\n".join(original)
        self.client.call("tasks.set_requirements", {"task": self.task_id, "requirements": body})

    def _task_environment(self, code_dir: Path, task: dict[str, Any]) -> dict[str, str]:
        # The agent's secrets stay with the agent: the task gets a session token (CLEARML_AUTH_TOKEN, which the SDK
        # renews) instead of the key and secret, and a copy of the configuration without credentials.
        env = {k: v for k, v in os.environ.items() if k not in AGENT_SECRETS}
        env.update({str(k): str(v) for k, v in (self.cfg.get("environment", {}) or {}).items()})
        api = {"CLEARML_API_HOST": self.cfg.api_host, "CLEARML_WEB_HOST": self.cfg.web_host,
               "CLEARML_FILES_HOST": self.cfg.files_host, "CLEARML_AUTH_TOKEN": self._task_token()}
        env.update({k: v for k, v in api.items() if v})
        env.update({
            "CLEARML_TASK_ID": self.task_id, "TRAINS_TASK_ID": self.task_id,
            "CLEARML_WORKER_ID": self.worker, "CLEARML_LOG_TASK_TO_BACKEND": "0",
            "PYTHONUNBUFFERED": "1",  # lines reach the log as they are printed
            "PYTHONPATH": os.pathsep.join(p for p in (str(code_dir), env.get("PYTHONPATH", "")) if p),
        })
        task_config = self._task_config()
        if task_config is not None:
            env["CLEARML_CONFIG_FILE"] = str(task_config)
        else:
            env.pop("CLEARML_CONFIG_FILE", None)
        if self.opts.gpus is not None:
            env["NVIDIA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"] = self.opts.gpus
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.cfg.get("agent.enable_task_env"):
            section = (task.get("hyperparams") or {}).get("Environment") or {}
            env.update({name: str(p.get("value", "")) for name, p in section.items()})
        env.update(self.opts.extra_env)
        for key in ("VIRTUAL_ENV", "PYTHONHOME", PREBUILT_CODE_ENV, PREBUILT_PYTHON_ENV, PREBUILT_TASK_ENV):
            env.pop(key, None)
        return env

    def _task_token(self) -> str:
        try:
            return self.client.auth_token()
        except ConveyorError as exc:  # the SDK then has no credentials; the agent's next calls will say why
            log.warning("task %s: no session token for the task: %s", self.task_id, exc)
            return ""

    def _task_config(self) -> Path | None:
        """The configuration the task's SDK reads (its `sdk` section: storage, output...), without the agent's
        credentials, git password or agent settings; written beside the task, removed with it."""
        if self.cfg.path is None or self.work_dir is None:
            return None
        data = self.cfg.as_dict(masked=False)
        for section in ("agent", "conveyor"):
            data.pop(section, None)
        (data.get("api") or {}).pop("credentials", None)
        path = self.work_dir / "clearml.conf"
        path.write_text(json.dumps(data))  # HOCON reads JSON
        path.chmod(0o600)
        return path

    def _run_task(self, argv: list[str], cwd: Path, code_dir: Path, task: dict[str, Any],
                  report: Callable[[], object] | None = None) -> Outcome:
        """Run the entry point to its end. The task ends when its main process ends: whatever of its process tree is
        left then (a `setsid` grandchild holding the output pipe, a daemonized one on /dev/null) is ended too, since
        this process is their subreaper (process.py). `report` (a call that need not precede the entry point) is made
        while its interpreter starts, and always before its end is."""
        self.notice(f"conveyor: running {shlex.join(argv)} in {cwd}")
        try:
            env = self._task_environment(code_dir, task)
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        except OSError as exc:
            raise TaskFailure(f"could not start the entry point: {exc.strerror}") from None
        self._task_env, self._task_cwd = env, cwd
        ooms = oom_kills()
        code = self._follow(proc, report)
        if self._abort is not None:
            return self._abort
        if code == 0:
            return Outcome(TaskStatus.completed, "worker execution done", 0)
        if code in (-signal.SIGKILL, 128 + signal.SIGKILL) and oom_kills() > ooms:
            # the kernel's out-of-memory killer: the machine's memory ran out (perhaps for others' processes)
            return Outcome(TaskStatus.failed, "worker execution killed by the out-of-memory killer", code,
                           FailureClass.infrastructure)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return Outcome(TaskStatus.failed, f"worker execution killed by signal {name}", code)
        return Outcome(TaskStatus.failed, f"worker execution exit code {code}", code)

    def _follow(self, proc: subprocess.Popen[bytes], report: Callable[[], object] | None = None) -> int:
        """Ship the process's output until its main process ends, then end what it left running; its exit code."""
        self.proc = proc
        pump = threading.Thread(target=self._pump, args=(proc,), name="output", daemon=True)
        pump.start()
        if report is not None and self._abort is None:  # none once the run is aborted
            try:
                report()
            except Exception as exc:  # noqa: BLE001 - the task runs already: a report that failed does not stop it
                self.notice(f"conveyor: could not report on the task's start: {exc}", "warning")
        code = proc.wait()
        left = end_orphans(float(self.cfg.get("agent.kill_grace_sec")))
        if left:
            self.notice(f"conveyor: ended {left} process(es) left running after the main process exited")
        pump.join(PUMP_DRAIN_SEC)
        if pump.is_alive():  # something outside our tree holds the pipe: stop reading, the process has ended
            with contextlib.suppress(OSError):
                assert proc.stdout is not None
                proc.stdout.close()
        return code

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        """Copy the process's output to the log shipper (and our stdout) until the pipe closes: whole lines, and
        a line longer than an event in pieces, so that no output can grow our memory without bound."""
        stdout = cast(io.BufferedReader, proc.stdout)  # a pipe: Popen's default buffering
        out = sys.stdout
        pending = b""
        try:
            while True:
                chunk = stdout.read1(PUMP_CHUNK_BYTES)
                if not chunk:
                    break
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                if not cut and len(pending) >= MAX_EVENT_BYTES:
                    cut = len(pending)
                if not cut:
                    continue
                self._emit(decode_output(pending[:cut]), out)
                pending = pending[cut:]
        except (OSError, ValueError):  # closed under us once the task ended
            pass
        if pending:
            self._emit(decode_output(pending), out)

    def _emit(self, text: str, out: TextIO) -> None:
        if self._task_env is not None and "first_output" not in self.timeline.at:  # the entry point's, not setup's
            self.timeline.mark("first_output")
        if self.follower:
            text = self._ranked(text)
        if self.logs is not None:
            self.logs.write(text)
        if self.opts.echo:
            out.write(text)
            out.flush()

    # --- watching -------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Poll the task's status for an abort; ping it now and then; report the worker when standalone."""
        interval = float(self.cfg.get("agent.abort_poll_interval_sec"))
        ping_every = float(self.cfg.get("agent.task_ping_interval_sec"))
        report_every = float(self.cfg.get("agent.status_report_interval_sec"))
        last_ping = last_report = time.monotonic()
        created_seen = 0
        while not self._done.wait(interval):
            if self._shutdown.is_set():
                self._trigger(self._shutdown_outcome("SIGTERM"))
                return
            try:
                found = self.client.call("tasks.get_all", {"id": [self.task_id], "search_hidden": True,
                                                           "only_fields": ["status", "status_message"]})["tasks"]
            except ConveyorError as exc:  # server unreachable for now: the task goes on
                log.debug("task %s: could not read its status: %s", self.task_id, exc)
                continue
            if not found:
                self._trigger(Outcome(None, "the task was deleted"))
                return
            status = found[0].get("status")
            message = found[0].get("status_message") or ""
            if status == TaskStatus.in_progress and STOPPING in message:
                self._trigger(Outcome(TaskStatus.stopped, "task was stopped by tasks.stop"), let_task_react=True)
                return
            if status in SET_ELSEWHERE:
                self._trigger(Outcome(None, f"the task's status changed to {status} elsewhere"))
                return
            created_seen = created_seen + 1 if status == TaskStatus.created else 0
            if created_seen >= 2:
                self._trigger(Outcome(None, "the task was reset"))
                return
            now = time.monotonic()
            if now - last_ping >= ping_every and not self.follower:
                last_ping = now
                self._tolerant_call("tasks.ping", {"task": self.task_id})
            if not self.opts.under_daemon and now - last_report >= report_every:
                last_report = now
                self._report(task_running=True)

    def _trigger(self, outcome: Outcome, let_task_react: bool = False) -> None:
        """End the task's process tree for `outcome`. On a user's abort (`let_task_react`) of a running entry point,
        the task first gets its say: CLEARML_AGENT_ABORT_CALLBACK_CMD runs, and an abort callback the SDK registered
        (`Task.register_abort_callback`) is waited for; then SIGTERM, SIGKILL after agent.kill_grace_sec."""
        if self._abort is not None:
            return
        self._abort = outcome
        if self.logs is not None:
            self.logs.release_writers()
        self.notice(f"conveyor: stopping the task: {outcome.reason}", "error" if outcome.status else "warning")
        proc = self.proc
        if proc is not None and proc.poll() is None and let_task_react and self._task_env is not None:
            abort_callbacks.run_abort_command(self._task_env, self._task_cwd, proc, self.cfg, self.notice)
            abort_callbacks.wait_for_sdk_callback(self.client, self.task_id, proc, self.cfg, self.notice)
        if proc is not None and proc.poll() is None:
            kill_tree(proc.pid, float(self.cfg.get("agent.kill_grace_sec")))

    def _shutdown_outcome(self, signame: str) -> Outcome:
        """How a stop signal ends the task. In a glue's job the signal is the cluster's (a time limit, a cancel, an
        eviction): the glue reads why from the cluster and fails the task with it; a status set here would race it."""
        if self.opts.cluster_glue:
            return Outcome(None, f"the cluster ended the job ({signame}); the glue reports why")
        return Outcome(TaskStatus.stopped, f"agent shut down ({signame}) while the task ran")

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: Any) -> None:
            self._shutdown.set()
            if self._abort is None:
                outcome = self._shutdown_outcome(signal.Signals(signum).name)
                threading.Thread(target=self._trigger, daemon=True, args=(outcome,)).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # --- end ------------------------------------------------------------------------------------------------------
    def _finish(self, outcome: Outcome) -> None:
        self._done.set()
        self.timeline.mark("ended")
        end_line = END_LINES.get(outcome.status, "Process ended: {}") if outcome.status else "Process ended: {}"
        reason = shown(outcome.reason, outcome.failure_class) if outcome.status == TaskStatus.failed else outcome.reason
        self.notice(f"conveyor: {end_line.format(reason)}",
                    "info" if outcome.status == TaskStatus.completed else "error")
        self._close_logs()
        # before the final status: a failure it retries may start this task again here, in a work dir of that name
        if self.work_dir is not None and not self.cfg.get("agent.keep_work_dirs"):
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if outcome.status and not self.follower:
            body = {"task": self.task_id, "force": outcome.status != TaskStatus.completed,
                    "status_reason": outcome.reason, "status_message": self.status_message}
            if self.client.server_supports("timeline"):  # a Conveyor field, with the call made anyway
                body["timeline"] = self.timeline.as_dict(self.worker)
            if outcome.status == TaskStatus.failed:
                body[FAILURE_CLASS] = outcome.failure_class.value
            try:
                try:
                    self.client.call(END_CALLS[outcome.status], body)
                except ApiCallError as exc:
                    if "timeline" not in body or exc.code != 400:
                        raise
                    # the status matters, the timeline does not: a server that refuses this one gets the status
                    log.warning("task %s: the server refused the run's timeline (%s)", self.task_id, exc.msg)
                    body.pop("timeline")
                    self.client.call(END_CALLS[outcome.status], body)
            except ConveyorError as exc:  # e.g. the task was reset or deleted meanwhile: nothing left to mark
                log.warning("task %s: could not set the final status (%s)", self.task_id, exc)
        if not self.opts.under_daemon and not self.follower:
            self._report(task_running=False)
            self._tolerant_call("workers.unregister", {"worker": self.worker, "queues": []})

    def _close_logs(self) -> None:
        if self.logs is not None and not self.logs.close(timeout=float(self.cfg.get("agent.log_flush_timeout_sec"))):
            log.warning("task %s: some log lines could not be sent to the server", self.task_id)

    def _report(self, task_running: bool) -> None:
        body: dict[str, Any] = {"worker": self.worker, "timestamp": int(time.time()) * 1000, "is_daemon": False,
                                "machine_stats": None}
        if task_running:
            body["task"] = self.task_id
        self._tolerant_call("workers.status_report", body)

    def _tolerant_call(self, endpoint: str, body: dict[str, Any]) -> None:
        """A call whose failure must not end the task (a ping, a worker report): logged, then work goes on."""
        try:
            self.client.call(endpoint, body)
        except ConveyorError as exc:
            log.debug("%s: %s", endpoint, exc)


class _Aborted(Exception):
    """Raised at a phase boundary once an abort has been triggered."""


def oom_kills() -> int:
    """How many processes the out-of-memory killer has ended in this process's cgroup (v2), 0 when unknown."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        events = Path("/sys/fs/cgroup", line.split("::", 1)[1].lstrip("/"), "memory.events").read_text()
    except (OSError, IndexError):
        return 0
    for row in events.splitlines():
        key, _, value = row.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


def prebuilt_environment(task_id: str) -> tuple[Path, Path] | None:
    """(code dir, python) when this process runs in an image that `conveyor build` made for `task_id` (the task
    given to execute, before any --clone), else None."""
    code, python = os.environ.get(PREBUILT_CODE_ENV), os.environ.get(PREBUILT_PYTHON_ENV)
    if not (code and python) or os.environ.get(PREBUILT_TASK_ENV) != task_id:
        return None
    return Path(code), Path(python)

