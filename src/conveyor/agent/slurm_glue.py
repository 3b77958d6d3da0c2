"""The Slurm glue (`conveyor slurm`): a cluster glue (`cluster_glue.py`) whose jobs are sbatch jobs, one batch-script
template per queue (`runtimes/slurm.py`, `runtimes/slurm_script.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conveyor.agent.cluster_glue import ClusterGlue
from conveyor.agent.daemon import DaemonError, DaemonOptions
from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.errors import TaskFailure
from conveyor.runtimes.run_records import agent_dir
from conveyor.runtimes.slurm import SlurmRuntime
from conveyor.runtimes.slurm_script import singularity_image


class SlurmGlue(ClusterGlue):
    TITLE = "Slurm"
    JOB_PROPERTY = "slurm-job-id"

    def __init__(self, client: ApiCaller, cfg: Config, opts: DaemonOptions, *, templates: dict[str, Path],
                 max_jobs: int = 0, queue_limits: dict[str, int] | None = None, singularity: bool = False):
        default_image = str(cfg.get("agent.default_docker.image") or "")

        def image_of(task: dict[str, Any]) -> str:
            image = (task.get("container") or {}).get("image") or default_image
            if not image:
                raise TaskFailure("--singularity-mode: the task names no image and agent.default_docker.image is "
                                  "empty")
            return singularity_image(image)

        self.slurm = SlurmRuntime(
            str(cfg.path) if cfg.path else None,
            fetch_task=lambda task_id: client.call("tasks.get_by_id", {"task": task_id})["task"],
            work_dir=Path(cfg.get("agent.slurm.work_dir") or agent_dir() / "slurm").expanduser(),
            singularity_image=image_of if singularity else None,
            pre_setup=list(cfg.get("agent.slurm.pre_setup") or []),
            post_setup=list(cfg.get("agent.slurm.post_setup") or []),
            refresh_sec=float(cfg.get("agent.slurm.poll_interval_sec")))
        super().__init__(client, cfg, opts, self.slurm, max_jobs, queue_limits or {})
        self.templates = templates  # queue name (or id) -> template file

    def _bind(self, queue_ids: list[str]) -> None:
        texts: dict[str, tuple[str, str]] = {}
        by_name = {name.lower(): path for name, path in self.templates.items()}
        for queue_id in queue_ids:
            name = self.queue_names[queue_id]
            path = by_name.get(name.lower()) or self.templates.get(queue_id)
            if path is None:
                raise DaemonError(f'No batch template for queue "{name}"',
                                  hint="Give one --template-files entry per --queue, in the same order, or set "
                                       "agent.slurm.templates")
            try:
                texts[queue_id] = (path.name, path.read_text())
            except OSError as exc:
                raise DaemonError(f"Could not read the template {path}: {exc.strerror}") from None
        self.slurm.bind(texts, self.queue_names)
