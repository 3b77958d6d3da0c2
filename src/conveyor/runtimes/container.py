"""Running `conveyor execute` in a container, with Docker or Podman (clearml-agent.md §5, runtimes.md §2-3).

    runtime = ContainerRuntime(cfg, engine="docker", image=None, arguments=["--ipc=host"], gpus="none",
                               fetch_task=lambda t: client.call("tasks.get_by_id", {"task": t})["task"])
    runtime.adopt("host:0")                  # labels; removes what a killed daemon of this id left
    proc = runtime.launch(TaskRun(task_id), env)  # a RunHandle: the subprocess.Popen of `<engine> run ...`

Inside runs the same `conveyor execute` as on bare metal, from Conveyor's own bundle (runtimes/bundle.py: the host's
Python, git and uv with their libraries and loader, made once per host and Conveyor build) mounted read-only, so that
it depends on nothing in the image; it first installs what the image lacks (agent/container_start.py), then runs the
task with the image's own Python. The container never reaches a package index for Conveyor. The engine's command
line carries no secret: the API credentials and git credentials are in a temporary
clearml.conf (mode 0600) mounted read-only, other secret-looking variables in an --env-file.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.config import Config, hocon
from conveyor.errors import TaskFailure, UserError
from conveyor.progress import Log
from conveyor.protocol.failure import of_image
from conveyor.runtimes import container_args as cargs
from conveyor.runtimes import image_uses
from conveyor.runtimes.base import Leftover, TaskRun
from conveyor.runtimes.bundle import Bundle, BundleError, prepare

START_FAILURES = {125, 126, 127}  # the engine's own exit codes: the container did not start (or its command)
CONFIG_IN_CONTAINER = "/etc/conveyor/clearml.conf"
CA_IN_CONTAINER = "/etc/ssl/certs/conveyor-host-ca.crt"
SSH_AGENT_IN_CONTAINER = "/run/conveyor-ssh-agent.sock"
CONFIG_CACHE_IN_CONTAINER = "~/.cache/conveyor/config"  # config/hocon.py's parse cache, kept across runs
LABEL_TASK, LABEL_WORKER, LABEL_PARENT = "conveyor.task", "conveyor.worker", "conveyor.parent-worker"
LABEL_PARENT_PID = "conveyor.parent-pid"  # the daemon's pid: a container whose daemon still lives is not a leftover
ENGINE_TIMEOUT_SEC = 60  # inspect, ps, rm: quick commands
START_MODULE = "conveyor.agent.container_start"  # what the bundle runs first in a task's container
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]+")
_SECRET_ENV = re.compile(r"(?i)pass|secret|token|key|auth|credential")
_GIT_ENV = {"CLEARML_AGENT_GIT_USER": "git_user", "CLEARML_AGENT_GIT_PASS": "git_pass"}
_NOT_PASSED = {"NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"}  # the engine's GPU flags decide what is visible

log = logging.getLogger("conveyor.runtimes.container")


class LaunchError(TaskFailure):
    """The container could not be started; one line, no secret. From launch() it is the task's status reason
    ("container failed to start: ...")."""

    failure_class = "infrastructure"  # the engine, the image or the machine: another try may start it


@dataclass
class ContainerCommand:
    """One `<engine> run` ready to start. `workdir` holds the run's files (config, ssh copy): cleanup() removes
    it once the container has ended (or, for a detached run, once the container no longer needs them)."""

    argv: list[str]
    name: str
    image: str
    bundle: Bundle
    workdir: Path
    masked: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __str__(self) -> str:
        return shlex.join(self.masked or self.argv)


class ContainerRuntime:
    """Docker or Podman: builds the engine's command for a task, prepares Conveyor for the image, starts it."""

    def __init__(self, cfg: Config, *, engine: str | None = None, image: str | None = None,
                 arguments: Sequence[str] = (), gpus: str | None = None,
                 fetch_task: Callable[[str], dict[str, Any]] | None = None, execute_args: Sequence[str] = (),
                 log: Log | None = None):
        self.cfg = cfg
        self.engine_argv = shlex.split(engine or str(cfg.get("agent.docker_command") or "docker"))
        self.engine = "podman" if "podman" in Path(self.engine_argv[0]).name else "docker"
        self.image = image or None
        self.arguments = list(arguments)
        self.gpus = gpus if gpus is not None else ("all" if Path("/dev/nvidiactl").exists() else "none")
        self.fetch_task = fetch_task
        self.execute_args = list(execute_args)  # more flags of the inner `conveyor execute` (--clone, ...)
        self.log: Log = log or logging.getLogger("conveyor.runtimes.container").info  # the daemon's log
        self.worker = ""  # the daemon's worker id: the parent-worker label

    @classmethod
    def from_cli(cls, cfg: Config, docker: Sequence[str], *, podman: bool = False, gpus: str | None = None,
                 fetch_task: Callable[[str], dict[str, Any]] | None = None,
                 execute_args: Sequence[str] = ()) -> ContainerRuntime:
        """From `--docker [IMAGE [ARGS...]]` / `--podman [...]`."""
        tokens = list(docker)
        image = tokens.pop(0) if tokens and not tokens[0].startswith("-") else None
        return cls(cfg, engine="podman" if podman else None, image=image, arguments=tokens, gpus=gpus,
                   fetch_task=fetch_task, execute_args=execute_args)

    # --- the daemon's side ----------------------------------------------------------------------------------------
    def attach_worker(self, worker: str) -> list[str]:
        """Label this daemon's containers with `worker`; remove the containers a killed daemon with the same id left
        (running ones included) and return their task ids, for the caller to settle their status."""
        self.worker = worker
        found = {cid: task for cid, (task, pid) in self.containers(f"{LABEL_PARENT}={worker}", check=True).items()
                 if not _daemon_alive(pid)}
        if found:
            self._engine(["rm", "-f", *found])
        for task in found.values():
            log.info("removed the leftover container of task %s", task or "(unknown)")
        return [task for task in found.values() if task]

    def describe(self) -> str:
        return f"tasks in {self.engine} containers"

    def standby_pids(self) -> frozenset[int]:
        return frozenset()

    def drain(self) -> None:
        """Nothing is kept ready for a next task."""

    def adopt(self, worker: str) -> list[Leftover]:
        """Nothing is adopted: the containers a killed daemon of this worker id left are removed (attach_worker), and
        their tasks, if still in progress, fail."""
        try:
            removed = self.attach_worker(worker)
        except LaunchError as exc:
            raise UserError(f"container engine: {exc}") from None
        return [Leftover(task_id, reason="its container was removed: the agent running it was killed")
                for task_id in removed]

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> ContainerProcess:
        """Start the task's container (what LocalRuntime.launch is for a local process). Raises LaunchError."""
        task_id = run.task_id
        task = self.fetch_task(task_id) if self.fetch_task else {}
        try:
            command = self.command(task_id, task=task, env=env)
        except LaunchError as exc:
            raise LaunchError(f"container failed to start: {exc}", failure_class=exc.failure_class) from None
        except OSError as exc:  # the run's files could not be written
            raise LaunchError(f"the agent could not start the task: {exc.strerror}") from None
        log.debug("task %s: %s", task_id, command)  # masked
        try:
            return ContainerProcess(command, self)
        except OSError as exc:
            command.cleanup()
            raise LaunchError(f"container failed to start: could not run {self.engine_argv[0]}: {exc.strerror}") \
                from None

    # --- the command ----------------------------------------------------------------------------------------------
    def resolve_image(self, task: Mapping[str, Any]) -> tuple[str, list[str], list[str]]:
        """(image, agent arguments, task arguments): the task's container.image wins (unless
        agent.disable_task_docker_override), else --docker IMAGE, $CLEARML_DOCKER_IMAGE, agent.default_docker."""
        container = task.get("container") or {}
        task_image = cargs.split_args(str(container.get("image") or ""))  # old tasks: "image args..."
        agent = cargs.split_args(os.environ.get("CLEARML_AGENT_EXTRA_DOCKER_ARGS")
                                 or self.cfg.get("agent.extra_docker_arguments")) + self.arguments
        if task_image and not self.cfg.get("agent.disable_task_docker_override"):
            image, task_extra = task_image[0], task_image[1:]
        else:
            image, task_extra = self.image or os.environ.get("CLEARML_DOCKER_IMAGE") or "", []
            if not image:
                image = str(self.cfg.get("agent.default_docker.image") or "")
                agent += cargs.split_args(self.cfg.get("agent.default_docker.arguments"))
        if not image:
            raise LaunchError("no container image: set agent.default_docker.image, pass --docker IMAGE, or give the "
                              "task one (conveyor task create --docker IMAGE)", failure_class="task")
        return image, agent, task_extra + cargs.split_args(str(container.get("arguments") or ""))

    def command(self, task_id: str, *, task: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                inner: Sequence[str] | None = None, name: str | None = None, detach: bool = False,
                remove: bool = True) -> ContainerCommand:
        """The engine's argv that runs `inner` (default: `conveyor execute --id task_id`) for `task` in its image,
        with every mount, label and setting of a task run; Conveyor is prepared for the image first. `env` are
        variables for the container (as the daemon gives LocalRuntime). Raises LaunchError."""
        task = task or {}
        env = dict(env or {})
        image, agent_args, task_args = self.resolve_image(task)
        image_id = self.ensure_image(image)
        image_uses.record(self.cfg, self.engine, (image_id, image))  # `conveyor gc` ages images by last use
        bundle = self.prepare_bundle()
        merged = cargs.merge(
            agent_args, task_args, filters=_listed(self.cfg.get("agent.docker_args_filters")),
            forbidden=_listed(self.cfg.get("agent.forbidden_docker_args")),
            protected=_listed(self.cfg.get("agent.protected_docker_extra_args")),
            agent_first=bool(self.cfg.get("agent.docker_args_extra_precedes_task")))
        # the daemon's GPUs, or the ones dynamic allocation gave this task
        gpus = env.get("NVIDIA_VISIBLE_DEVICES") or self.gpus
        host_mounts = cargs.host_mounts(os.environ)
        # an agent in a pod: the run's files must live where the node's engine can mount them from
        runs_dir = Path(host_mounts[0][1]) / "conveyor-runs" if host_mounts else None
        if runs_dir is not None:
            runs_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"conveyor-run-{task_id[:12]}-", dir=runs_dir))
        try:
            self._write_config(workdir / "clearml.conf", env)
            name = name or self._name(task_id, env.get("CLEARML_WORKER_ID", ""))
            argv = [*self.engine_argv, "run", *(["--rm"] if remove else []), *(["-d"] if detach else []),
                    "--name", name, "--pull", "never", *self._init_flags(),
                    "--label", f"{LABEL_TASK}={task_id}",
                    "--label", f"{LABEL_WORKER}={env.get('CLEARML_WORKER_ID') or self.worker}",
                    *(["--label", f"{LABEL_PARENT}={self.worker}", "--label", f"{LABEL_PARENT_PID}={os.getpid()}"]
                      if self.worker else []),
                    *([] if cargs.sets(merged, "network", "net") else ["--network", "host"]),
                    *cargs.gpu_flags(self.engine, gpus),
                    *cargs.mps_flags(env, merged),
                    *self._env_flags(task_id, image, env, workdir),
                    *self._mounts(bundle, image_id, workdir),
                    *merged, image]
            if inner is None:
                inner = bundle.module_argv(START_MODULE, "execute", "--id", task_id, *self.execute_args,
                                           *(["--cpu-only"] if gpus == "none" else []))
            script = self.cfg.get("agent.extra_docker_shell_script")
            if script:  # the agent's own lines first, in the container's shell, then Conveyor
                lines = script if isinstance(script, str) else "\n".join(map(str, script))
                inner = ["sh", "-c", f'{lines}\nexec "$@"', "conveyor", *inner]
            argv += list(inner)
            if host_mounts:
                argv = cargs.to_host_paths(argv, host_mounts)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        masked = cargs.mask(argv, _listed(self.cfg.get("agent.hide_docker_command_env_vars.extra_keys")))
        return ContainerCommand(argv, name, image, bundle, workdir, masked)

    def prepare_bundle(self) -> Bundle:
        """Conveyor's bundle for containers: made once per host and Conveyor build, then reused."""
        root = _path(self.cfg.get("agent.docker_conveyor_env_dir")) or Path.home() / ".clearml" / "conveyor-bundles"
        try:
            return prepare(root, log=self.log)
        except (BundleError, OSError) as exc:
            raise LaunchError(f"could not make Conveyor's bundle for containers: {exc}") from None

    def ensure_image(self, image: str) -> str:
        """The image's id; a missing image is pulled (as `docker run` would), always with agent.docker_force_pull."""
        found = None if self.cfg.get("agent.docker_force_pull") else self.image_id(image)
        if found:
            return found
        pulled = self._engine(["pull", image], timeout=3600, check=False)
        found = self.image_id(image)
        if found:
            return found
        hint = ""
        if image == self.cfg.get("agent.default_docker.image"):
            hint = " (agent.default_docker.image: build it, e.g. .ci/images/build-base-image.sh, or set another)"
        raise LaunchError(f"Unable to find image '{image}' locally, and pulling it failed: {_last_lines(pulled)}{hint}",
                          failure_class=of_image(_last_lines(pulled)).value)

    def image_id(self, image: str) -> str | None:
        out = self._engine(["image", "inspect", "--format", "{{.Id}}", image], check=False)
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    # --- engine commands ------------------------------------------------------------------------------------------
    def containers(self, label: str, check: bool = False) -> dict[str, tuple[str, str]]:
        """{container id: (task id, parent daemon pid)} of the containers (running or not) with `label` (k=v);
        with `check`, an engine that does not answer raises LaunchError."""
        ids = self._engine(["ps", "-a", "-q", "--no-trunc", "--filter", f"label={label}"], check=check).stdout.split()
        if not ids:
            return {}
        labels = " ".join(f'{{{{index .Config.Labels "{key}"}}}}|' for key in (LABEL_TASK, LABEL_PARENT_PID))
        out = self._engine(["inspect", "--format", "{{.Id}} " + labels, *ids], check=False)
        found = dict.fromkeys(ids, ("", ""))
        for line in out.stdout.splitlines():
            cid, _, rest = line.partition(" ")
            values = [v.strip() for v in rest.split("|")]
            if cid:
                found[cid] = (values[0] if values else "", values[1] if len(values) > 1 else "")
        return found

    def stop(self, name: str, grace: float | None = None) -> None:
        """`<engine> stop -t <grace>`: SIGTERM to the container's executor, which stops the task and reports it
        stopped; SIGKILL after the grace. The executor's own grace for the task comes first, hence the margin."""
        grace = float(self.cfg.get("agent.kill_grace_sec")) if grace is None else grace
        self._engine(["stop", "-t", str(int(grace) + 5), name], timeout=grace + 60, check=False)

    def _engine(self, args: Sequence[str], *, timeout: float = ENGINE_TIMEOUT_SEC,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            out = subprocess.run([*self.engine_argv, *args], capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise LaunchError(f"no {self.engine_argv[0]} command on this machine (install {self.engine}, or set "
                              "agent.docker_command)") from None
        except subprocess.TimeoutExpired:
            raise LaunchError(f"{self.engine} {args[0]} did not answer within {timeout:g} s") from None
        if check and out.returncode != 0:
            raise LaunchError(f"{self.engine} {args[0]} failed: {_last_lines(out)}")
        return out

    # --- pieces of the command ------------------------------------------------------------------------------------
    def _name(self, task_id: str, worker: str) -> str:
        template = self.cfg.get("agent.docker_container_name_format")
        rand = secrets.token_hex(3)
        try:
            name = str(template).format(task_id=task_id, worker_id=worker, rand_string=rand) if template else ""
        except (KeyError, IndexError, ValueError):
            name = ""
        return _NAME_CHARS.sub("-", name).strip("-.") or f"conveyor-{task_id[:12]}-{rand}"

    def _init_flags(self) -> list[str]:
        """An init process as PID 1, so that the executor gets signals as usual and orphans are reaped. Podman wants
        catatonit; Debian's podman lacks it, docker.io's tini does the same job."""
        if self.engine == "docker" or Path("/usr/libexec/podman/catatonit").exists():
            return ["--init"]
        tini = next((p for p in ("/usr/bin/docker-init", "/usr/bin/tini-static", "/usr/bin/tini") if Path(p).exists()),
                    None)
        return ["--init", "--init-path", tini] if tini else []

    def _env_flags(self, task_id: str, image: str, env: dict[str, str], workdir: Path) -> list[str]:
        values = {"CLEARML_CONFIG_FILE": CONFIG_IN_CONTAINER, "CLEARML_TASK_ID": task_id,
                  "CLEARML_DOCKER_IMAGE": image}
        if (env.get("NVIDIA_VISIBLE_DEVICES") or self.gpus) == "none":
            values["NVIDIA_VISIBLE_DEVICES"] = "none"
        secret: dict[str, str] = {}
        for key, value in env.items():
            if key in _NOT_PASSED or key in _GIT_ENV:
                continue
            (secret if _SECRET_ENV.search(key) else values)[key] = value
        ca = self._ca_bundle()
        if ca is not None:
            values.update(dict.fromkeys(("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"),
                                        CA_IN_CONTAINER))
        if _ssh_agent_socket():
            values["SSH_AUTH_SOCK"] = SSH_AGENT_IN_CONTAINER
        flags = [arg for key, value in values.items() for arg in ("-e", f"{key}={value}")]
        if secret:
            path = workdir / "secret.env"
            _write_private(path, "".join(f"{k}={v}\n" for k, v in secret.items()))
            flags += ["--env-file", str(path)]
        return flags

    def _mounts(self, bundle: Bundle, image_id: str, workdir: Path) -> list[str]:
        inside = self.cfg.get("agent.docker_internal_mounts")
        flags = [*bundle.mount(), "-v", f"{workdir / 'clearml.conf'}:{CONFIG_IN_CONTAINER}:ro"]
        for host, target in self._cache_mounts(bundle, image_id):
            host.mkdir(parents=True, exist_ok=True)  # podman refuses a missing source; docker would make it root's
            flags += ["-v", f"{host}:{target}"]
        ca = self._ca_bundle()
        if ca is not None:
            flags += ["-v", f"{ca}:{CA_IN_CONTAINER}:ro"]
        ssh = self._ssh_copy(workdir)
        if ssh is not None:
            flags += ["-v", f"{ssh}:{_home(inside['ssh_folder'])}"]
        sock = _ssh_agent_socket()
        if sock:
            flags += ["-v", f"{sock}:{SSH_AGENT_IN_CONTAINER}"]
        return flags

    def _cache_mounts(self, bundle: Bundle, image_id: str) -> list[tuple[Path, str]]:
        """(host folder, container folder) of the caches shared with the host (agent.docker_internal_mounts say
        where). The venv cache gets a folder per image: its venvs point at the image's interpreter."""
        cfg = self.cfg
        pairs: list[tuple[Path | None, str]] = [
            (self._uv_cache(), "uv_cache"),
            (_path(cfg.get("agent.docker_pip_cache")), "pip_cache"),
            (_path(cfg.get("agent.docker_apt_cache")), "apt_cache"),
        ]
        if cfg.get("agent.pip_download_cache.enabled"):
            pairs.append((_path(cfg.get("agent.pip_download_cache.path")), "pip_download"))
        if cfg.get("agent.vcs_cache.enabled"):
            pairs.append((_path(cfg.get("agent.vcs_cache.path")), "vcs_cache"))
        venvs = _path(cfg.get("agent.venvs_cache.path"))
        if venvs is not None:
            pairs.append((venvs / "images" / image_id.removeprefix("sha256:")[:32], "venvs_cache"))
        if cfg.get("agent.package_manager.type") == "poetry":
            pairs.append((_path(cfg.get("agent.docker_poetry_cache")), "poetry_cache"))
        # Without it every container would parse the configuration anew with pyhocon (~0.4 s); it holds the
        # parsed clearml.conf, so it is private (0700, files 0600).
        config_cache = bundle.host_dir.parent / "config-cache"
        config_cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        inside = {key: _home(path) for key, path in (cfg.get("agent.docker_internal_mounts") or {}).items()}
        mounts = [(host, inside[key]) for host, key in pairs if host is not None]
        return mounts + [(config_cache, _home(CONFIG_CACHE_IN_CONTAINER))]

    def _write_config(self, path: Path, env: Mapping[str, str]) -> None:
        """The agent's configuration with its paths turned into the container's (clearml-agent.md §5.2)."""
        data = self.cfg.as_dict(masked=False)
        data.pop("conveyor", None)  # server settings
        agent = data.setdefault("agent", {})
        inside = {k: _home(v) for k, v in (agent.get("docker_internal_mounts") or {}).items()}
        agent["venvs_dir"] = inside["venv_build"]
        agent["venvs_cache"]["path"] = inside["venvs_cache"] if agent["venvs_cache"].get("path") else ""
        agent["vcs_cache"]["path"] = inside["vcs_cache"]
        agent["pip_download_cache"]["path"] = inside["pip_download"]
        manager = agent["package_manager"]
        manager["uv_cache_dir"] = inside["uv_cache"]
        manager["uv_link_mode"] = manager.get("uv_link_mode") or "copy"  # caches are separate mounts: no hard links
        manager["system_site_packages"] = True  # as the reference: the image's own packages stay visible
        agent["python_binary"], agent["default_python"] = "", None  # the image's python, found inside
        for var, key in _GIT_ENV.items():
            if env.get(var):
                agent[key] = env[var]
        _write_private(path, "# Written by the Conveyor agent for one container run.\n" + hocon.dump(data) + "\n")

    def _uv_cache(self) -> Path:
        return (Path(os.environ["UV_CACHE_DIR"]) if os.environ.get("UV_CACHE_DIR")
                else _path(self.cfg.get("agent.package_manager.uv_cache_dir")) or Path.home() / ".cache" / "uv")

    def _ca_bundle(self) -> Path | None:
        """The host's CA bundle, for installs behind a TLS-intercepting proxy (runtimes.md §2.4)."""
        chosen = self.cfg.get("agent.docker_ca_bundle")
        if chosen == "":
            return None
        for candidate in (chosen, os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
            if candidate and Path(candidate).is_file():
                return Path(candidate).resolve()
        return None

    def _ssh_copy(self, workdir: Path) -> Path | None:
        """A copy of ~/.ssh for the container (it may write known_hosts; the original stays untouched)."""
        source = Path.home() / ".ssh"
        if self.cfg.get("agent.disable_ssh_mount") or os.environ.get("CLEARML_AGENT_DISABLE_SSH_MOUNT") \
                or not source.is_dir():
            return None
        target = workdir / "ssh"
        try:
            shutil.copytree(source, target, symlinks=False, ignore_dangling_symlinks=True,
                            ignore=shutil.ignore_patterns("*.sock", "agent.*"))
        except (OSError, shutil.Error):
            return None
        target.chmod(0o700)
        return target


class ContainerProcess(subprocess.Popen[bytes]):
    """`<engine> run` of one task, as the daemon handles any executor process: SIGTERM (terminate) stops the
    container with the grace; the engine's messages are passed on and kept, so that a container that did not start
    explains why (`start_failure`); the run's files are removed when it ends."""

    def __init__(self, command: ContainerCommand, runtime: ContainerRuntime):
        self.command = command
        self.runtime = runtime
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._ended = False
        self._stopper: threading.Thread | None = None
        super().__init__(command.argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._pump = threading.Thread(target=self._copy_stderr, name=f"stderr-{command.name}", daemon=True)
        self._pump.start()

    def _copy_stderr(self) -> None:
        assert self.stderr is not None
        out = getattr(sys.stderr, "buffer", None)
        for raw in iter(self.stderr.readline, b""):
            self._tail.append(raw.decode("utf-8", "replace").rstrip())
            if out is not None:
                with contextlib.suppress(OSError, ValueError):
                    out.write(raw)
                    out.flush()

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop()
        else:
            super().send_signal(sig)

    def terminate(self) -> None:
        self.stop()

    def kill(self) -> None:
        self.runtime._engine(["kill", self.command.name], check=False)
        super().kill()

    def stop(self, grace: float | None = None) -> None:
        """Stop the container (in the background: a signal handler calls this); `grace` defaults to
        agent.kill_grace_sec."""
        if self._stopper is None:
            self._stopper = threading.Thread(target=self.runtime.stop, args=(self.command.name, grace), daemon=True)
            self._stopper.start()

    def describe(self) -> str:
        return f"in container {self.command.name}, image {self.command.image}"

    def poll(self) -> int | None:
        code = super().poll()
        if code is not None:
            self._end()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        self._end()
        return code

    def _end(self) -> None:
        if self._ended or not hasattr(self, "_pump"):
            return
        self._ended = True
        self._pump.join(timeout=5)
        self.command.cleanup()

    @property
    def start_failure(self) -> str | None:
        """'container failed to start: <the engine's message>' when the engine could not run the container."""
        if self.returncode not in START_FAILURES:
            return None
        self._end()
        lines = [ln for ln in self._tail if ln and not ln.startswith(("See '", "Run '"))]
        message = "; ".join(ln.removeprefix("docker: ").removeprefix("Error: ") for ln in lines[-3:])
        return f"container failed to start: {message or f'{self.runtime.engine} exit code {self.returncode}'}"[:1000]


def _listed(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _path(value: Any) -> Path | None:
    return Path(os.path.expandvars(os.path.expanduser(str(value)))) if value else None


def _home(path: str) -> str:
    """A container path from docker_internal_mounts: `~` is root's home there."""
    return "/root" + path[1:] if path.startswith("~") else path


def _daemon_alive(pid: str) -> bool:
    """Whether `pid` is a running Conveyor process on this machine (then its containers are its own business)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        return b"conveyor" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _ssh_agent_socket() -> str | None:
    sock = os.environ.get("SSH_AUTH_SOCK")
    return sock if sock and os.path.exists(sock) else None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _last_lines(out: subprocess.CompletedProcess[str], count: int = 2) -> str:
    lines = [ln.strip() for ln in (out.stderr or out.stdout or "").splitlines() if ln.strip()]
    return "; ".join(lines[-count:]) or f"exit code {out.returncode}"


__all__ = ["ContainerCommand", "ContainerProcess", "ContainerRuntime", "LaunchError", "START_FAILURES"]
