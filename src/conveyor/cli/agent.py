"""`conveyor daemon` and `conveyor execute`: the flags of `clearml-agent daemon` / `execute`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from conveyor.runtimes.standby import STANDBY_FLAG

if TYPE_CHECKING:
    from conveyor.agent.session import PreparedClient


class _EngineArgsParser(argparse.ArgumentParser):
    """`--docker [IMAGE [ENGINE ARGS...]]` (or --podman) as the reference reads it: the engine's own flags follow the
    image (`--docker my/image:tag --ipc=host -v /data:/data`), up to the next flag of this command. argparse would
    take them for ours, so they are lifted out first."""

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's overloads
        args = list(sys.argv[1:] if args is None else args)
        namespace = namespace if namespace is not None else argparse.Namespace()
        engines = [i for i, token in enumerate(args) if token.split("=", 1)[0] in ("--docker", "--podman")]
        if engines:
            i = engines[0]
            flag, _, value = args[i].partition("=")
            end = i + 1
            while end < len(args) and args[end].split("=", 1)[0] not in self._option_string_actions:
                end += 1
            namespace.docker, namespace.podman = ([value] if value else []) + args[i + 1:end], flag == "--podman"
            args = args[:i] + args[end:]
            if any(token.split("=", 1)[0] in ("--docker", "--podman") for token in args):
                self.error("give --docker or --podman once")
        return super().parse_known_args(args, namespace)


def _container_args(p: argparse.ArgumentParser) -> None:
    p.__class__ = _EngineArgsParser
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--docker", nargs="*", metavar="IMAGE [ARGS]", default=None,
                        help="run tasks in containers: the task's image, else IMAGE, else agent.default_docker.image; "
                             "ARGS go to `docker run` (e.g. --ipc=host)")
    engine.add_argument("--podman", nargs="*", metavar="IMAGE [ARGS]", default=False,
                        help="as --docker, with Podman (or set agent.docker_command: podman)")
    p.add_argument("--force-current-version", action="store_true",
                   help="accepted for compatibility: containers always run this agent's own Conveyor version")


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--git-user", help="git user for cloning over https (agent.git_user)")
    p.add_argument("--git-pass", help="git password or token (agent.git_pass); prefer the config file")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"])
    gpus = p.add_mutually_exclusive_group()
    gpus.add_argument("--gpus", help="GPUs the task may see: 0 | 0,1 | all")
    gpus.add_argument("--cpu-only", action="store_true", help="the task sees no GPU")


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("daemon", help="pull tasks from queues and run them (clearml-agent daemon)")
    d.add_argument("--queue", nargs="+", default=[], metavar="QUEUE",
                   help="queue names or ids, in priority order (default: the default queue)")
    d.add_argument("--order-fairness", action="store_true", help="round-robin between the queues instead of priority")
    d.add_argument("--create-queue", action="store_true", help="create queues that do not exist")
    mode = d.add_mutually_exclusive_group()
    mode.add_argument("--foreground", action="store_true", help="run in this terminal (the default)")
    mode.add_argument("--detached", "-d", action="store_true", help="run in the background, output to a log file")
    # Not exclusive with --detached: the docs stop a daemon with its start command plus --stop.
    control = d.add_mutually_exclusive_group()
    control.add_argument("--stop", nargs="*", metavar="WORKER_ID",
                         help="stop the daemons started with the same arguments (queues, --gpus, --cpu-only, "
                              "--docker, --services-mode), or the listed worker ids")
    control.add_argument("--status", action="store_true", help="list the daemons running on this machine")
    d.add_argument("--polling-interval", type=float, help="seconds between polls when the server has no long-poll")
    d.add_argument("--services-mode", nargs="?", type=int, const=0, default=None, metavar="N",
                   help="run tasks side by side, at most N at once (no N: no limit)")
    # Not exclusive in argparse: with the config's agent.uptime/downtime, the daemon checks both at start.
    d.add_argument("--uptime", nargs="+", metavar="SPAN",
                   help='pull tasks only in these hours (local time), e.g. "17-20 SUN-TUE" "13-22 WED" '
                        "(agent.uptime)")
    d.add_argument("--downtime", nargs="+", metavar="SPAN",
                   help='pull no tasks in these hours, e.g. "20-00,00-08 SUN" (agent.downtime)')
    d.add_argument("--dynamic-gpus", action="store_true",
                   help="share --gpus between tasks: queues as NAME=N, NAME=MIN-MAX or NAME=0.25 (a fraction)")
    d.add_argument("--child-report-tags", nargs="+", default=[], metavar="TAG", help="tags in the worker's reports")
    d.add_argument("--log-file", help=argparse.SUPPRESS)
    _worker_args(d)
    _container_args(d)
    d.set_defaults(func=run_daemon)

    e = sub.add_parser("execute", help="run one task here, now (clearml-agent execute)")
    e.add_argument("--id", help="the task id (required)")
    e.add_argument("--clone", action="store_true", help="run a clone of the task instead of the task itself")
    e.add_argument("--require-queue", action="store_true", help="refuse to run a task that was not queued")
    e.add_argument("--disable-monitoring", action="store_true", help=argparse.SUPPRESS)
    e.add_argument("--full-monitoring", action="store_true", help=argparse.SUPPRESS)
    # a daemon's executor started ahead of its task, which comes on stdin (runtimes/standby.py)
    e.add_argument(STANDBY_FLAG, action="store_true", help=argparse.SUPPRESS)
    _worker_args(e)
    _container_args(e)
    e.set_defaults(func=run_execute, parser=e)


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, "WARNING" if level == "WARN" else level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # one line per HTTP request is noise in a worker's log
        logging.getLogger("httpx").setLevel(logging.WARNING)


def run_execute(args: argparse.Namespace) -> int:
    from conveyor.agent.executor import ExecuteOptions, Executor
    from conveyor.agent.session import agent_client
    from conveyor.cli.common import config_of

    prepared: PreparedClient | None = None
    if args.standby:
        task_id, prepared = _standby(args)
        if task_id is None:
            return 0
        args.id = task_id
    if not args.id:
        args.parser.error("the following arguments are required: --id")
    _setup_logging(args.log_level)
    cfg = config_of(args)
    client = (prepared.client_for(cfg) if prepared is not None else None) or agent_client(cfg)
    gpus = "none" if args.cpu_only else args.gpus
    if args.docker is not None:
        from conveyor.agent.container_execute import execute_in_container

        inner = [flag for flag, on in (("--clone", args.clone), ("--require-queue", args.require_queue)) if on]
        return execute_in_container(client, cfg, args.id, args.docker, podman=args.podman is True,
                                    gpus=gpus, git_user=args.git_user, git_pass=args.git_pass, execute_args=inner)
    opts = ExecuteOptions(task_id=args.id, clone=args.clone, worker_id=os.environ.get("CLEARML_WORKER_ID", ""),
                          under_daemon=os.environ.get("CONVEYOR_UNDER_DAEMON") == "1", gpus=gpus,
                          git_user=args.git_user, git_pass=args.git_pass, require_queue=args.require_queue,
                          rank=_rank(), cluster_glue=_under_glue())
    return Executor(client, cfg, opts).run()


def _standby(args: argparse.Namespace) -> tuple[str | None, PreparedClient | None]:
    """Import what a run needs and log in, then wait for the daemon's task: its id (None: the daemon went away
    first), and the client, to be used if the task's environment configures the same one."""
    import importlib

    from conveyor.agent.session import PreparedClient
    from conveyor.cli.common import config_of
    from conveyor.errors import ConveyorError
    from conveyor.runtimes.standby import await_task, settle

    settle()
    # what the executor imports, and what its phases and first requests import late
    for module in ("conveyor.agent.executor", "conveyor.agent.session", "conveyor.env.vcs", "conveyor.env.python",
                   "httpcore", "h11", "encodings.idna", "uv"):
        try:
            importlib.import_module(module)
        except ImportError:  # uv may be missing (then found on PATH): it is imported when needed, if ever
            pass
    try:
        prepared: PreparedClient | None = PreparedClient(config_of(args))
    except ConveyorError:  # a configuration the run itself will report
        prepared = None
    return await_task(), prepared


def _under_glue() -> bool:
    return bool(os.environ.get("CONVEYOR_SLURM_GLUE") or os.environ.get("CONVEYOR_K8S_GLUE"))


def _rank() -> int:
    """This process's rank in a glue's multi-node job, as Slurm (SLURM_PROCID) or a launcher (RANK) sets it; 0 when
    none, and always 0 outside a glue's job (a daemon started under srun or torchrun runs its tasks whole)."""
    if not _under_glue():
        return 0
    for name in ("SLURM_PROCID", "RANK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    from conveyor.agent import control
    from conveyor.agent.daemon import Daemon, DaemonOptions
    from conveyor.agent.gpu_allocation import dynamic_queues
    from conveyor.agent.session import agent_client
    from conveyor.cli.common import config_of

    queues, dynamic = dynamic_queues(args.queue, args.gpus, args.services_mode) if args.dynamic_gpus else (
        args.queue, None)
    opts = DaemonOptions(queues=queues, order_fairness=args.order_fairness, create_queue=args.create_queue,
                         services_mode=args.services_mode, gpus=args.gpus, cpu_only=args.cpu_only,
                         polling_interval=args.polling_interval, child_report_tags=args.child_report_tags,
                         git_user=args.git_user, git_pass=args.git_pass, log_file=args.log_file,
                         argv=control.mask_argv(["conveyor", *sys.argv[1:]]), docker=args.docker,
                         podman=args.podman is True, uptime=args.uptime, downtime=args.downtime,
                         dynamic_gpus=dynamic)
    if args.status:
        return control.print_status()
    if args.stop is not None:
        return control.stop(args.stop, opts.started_with())
    if args.detached:
        from conveyor.agent.schedule import Schedule

        Schedule.parse(args.uptime, args.downtime)  # a malformed span is told here, not in the detached log
        return control.detach(sys.argv[1:])
    _setup_logging(args.log_level)
    cfg = config_of(args)
    return Daemon(agent_client(cfg), cfg, opts).run()
