"""`conveyor slurm`: the Slurm glue, with the flags of the reference's `clearml-agent-slurm`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conveyor.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slurm", help="run queued tasks as Slurm batch jobs, one template per queue "
                                     "(clearml-agent-slurm)")
    p.add_argument("--template-files", nargs="+", default=[], metavar="FILE",
                   help="batch-script templates, one per --queue, in the same order (agent.slurm.templates)")
    p.add_argument("--queue", nargs="+", default=[], metavar="QUEUE",
                   help="queue names or ids, in priority order (default: those of agent.slurm.templates)")
    p.add_argument("--max-jobs", type=int, metavar="N",
                   help="at most N jobs submitted and not ended at once; beyond it the glue stops pulling "
                        "(agent.slurm.max_jobs; per queue: agent.slurm.queues.NAME.max_jobs)")
    p.add_argument("--singularity-mode", action="store_true",
                   help="run each job's command in Singularity: the task's image or agent.default_docker.image")
    p.add_argument("--order-fairness", action="store_true", help="round-robin between the queues instead of priority")
    p.add_argument("--create-queue", action="store_true", help="create queues that do not exist")
    p.add_argument("--polling-interval", type=float, help="seconds between polls when the server has no long-poll")
    p.add_argument("--status", action="store_true", help="list the jobs the glues of this machine track, and exit")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"])
    p.set_defaults(func=run_glue)


def _templates(args: argparse.Namespace, configured: dict[str, Any]) -> tuple[list[str], dict[str, Path]]:
    """(queues in priority order, queue -> template file) from the flags, else from agent.slurm.templates."""
    if args.template_files and len(args.template_files) != len(args.queue):
        raise UserError(f"{len(args.template_files)} template file(s) for {len(args.queue)} queue(s)",
                        hint="Give one --template-files entry per --queue, in the same order: "
                             "--template-files gpu.sbatch cpu.sbatch --queue gpu_q cpu_q")
    templates = {str(name): Path(str(path)).expanduser() for name, path in configured.items()}
    templates.update({queue: Path(path) for queue, path in zip(args.queue, args.template_files, strict=False)})
    queues = list(args.queue) or list(configured)
    if not queues:
        raise UserError("No queue to serve", hint="Pass --template-files FILE --queue NAME, or set "
                                                  "agent.slurm.templates { NAME: FILE }")
    for queue in queues:
        path = templates.get(queue)
        if path is None:
            raise UserError(f'No batch template for queue "{queue}"',
                            hint="Give one --template-files entry per --queue, in the same order")
        if not path.is_file():
            raise UserError(f"The template {path} (queue {queue}) does not exist",
                            hint="Pass the path of a batch script with #SBATCH lines and ${CLEARML_AGENT_EXECUTE}")
    return queues, templates


def _limits(configured: dict[str, Any]) -> dict[str, int]:
    limits = {}
    for name, section in configured.items():
        value = section.get("max_jobs") if isinstance(section, dict) else None
        if value is not None:
            try:
                limits[str(name)] = int(value)
            except (TypeError, ValueError):
                raise UserError(f"agent.slurm.queues.{name}.max_jobs is {value!r}: give a whole number") from None
    return limits


def run_glue(args: argparse.Namespace) -> int:
    from conveyor.cli.agent import _setup_logging
    from conveyor.cli.common import config_of

    if args.status:
        return print_status()
    _setup_logging(args.log_level)
    cfg = config_of(args)
    from conveyor.agent import control
    from conveyor.agent.daemon import DaemonOptions
    from conveyor.agent.session import agent_client
    from conveyor.agent.slurm_glue import SlurmGlue

    queues, templates = _templates(args, dict(cfg.get("agent.slurm.templates") or {}))
    max_jobs = args.max_jobs if args.max_jobs is not None else int(cfg.get("agent.slurm.max_jobs"))
    if max_jobs < 0:
        raise UserError(f"--max-jobs {max_jobs}: give 0 (no limit) or more")
    opts = DaemonOptions(queues=queues, order_fairness=args.order_fairness, create_queue=args.create_queue,
                         polling_interval=args.polling_interval, cpu_only=True, launched_by="slurm",
                         argv=control.mask_argv(["conveyor", *sys.argv[1:]]))
    return SlurmGlue(agent_client(cfg), cfg, opts, templates=templates, max_jobs=max_jobs,
                     queue_limits=_limits(dict(cfg.get("agent.slurm.queues") or {})),
                     singularity=args.singularity_mode or bool(cfg.get("agent.slurm.singularity_mode"))).run()


def print_status() -> int:
    """The jobs this machine's glues track: from their records, with Slurm's word on each."""
    from conveyor.cli._output import print_table
    from conveyor.runtimes.cluster import JobRecord
    from conveyor.runtimes.slurm import SlurmCli, SlurmError

    records = JobRecord.of("slurm", None)
    try:
        jobs = SlurmCli().jobs() if records else {}
    except SlurmError as exc:
        print(f"(squeue: {exc})")
        jobs = {}
    rows = []
    for record in records:
        state = jobs.get(record.job_id, (None, ""))[0]
        rows.append((record.worker, record.task_id, record.job_id or "(submitting)",
                     state.state if state else "ended", state.reason if state else ""))
    print_table(("GLUE", "TASK", "SLURM JOB", "STATE", "REASON"), rows,
                empty="No Slurm jobs tracked on this machine — start a glue with `conveyor slurm --template-files "
                      "FILE --queue NAME`")
    return 0

