"""The Kubernetes glue (`conveyor k8s`): a cluster glue (`cluster_glue.py`) whose jobs are Kubernetes Jobs, one pod
template per queue (`runtimes/k8s.py`, `runtimes/k8s_templates.py`)."""

from __future__ import annotations

from conveyor.agent.cluster_glue import ClusterGlue
from conveyor.agent.daemon import DaemonOptions
from conveyor.client.caller import ApiCaller
from conveyor.config import Config
from conveyor.protocol.status import TaskStatus
from conveyor.runtimes.cluster import ClusterJob
from conveyor.runtimes.k8s import K8sRuntime
from conveyor.runtimes.k8s_templates import GlueConfig


class K8sGlue(ClusterGlue):
    TITLE = "Kubernetes"
    JOB_PROPERTY = "k8s-job"
    UNIT_PROPERTY = "k8s-pod"

    def __init__(self, client: ApiCaller, cfg: Config, opts: DaemonOptions, *, glue: GlueConfig, namespace: str,
                 max_pods: int = 0, conveyor_image: str = ""):
        self.k8s = K8sRuntime(cfg, fetch_task=lambda task_id: client.call("tasks.get_by_id", {"task": task_id})["task"],
                              namespace=namespace, conveyor_image=conveyor_image)
        super().__init__(client, cfg, opts, self.k8s, max_pods, glue.max_pods)
        self.glue = glue

    def _bind(self, queue_ids: list[str]) -> None:
        by_name = {name.lower(): name for name in self.glue.overrides}
        templates = {}
        for queue_id in queue_ids:
            name = self.queue_names[queue_id]
            templates[queue_id] = self.glue.template(by_name.get(name.lower(), queue_id))
        self.k8s.bind(templates, self.queue_names)

    def _job_ended(self, job: ClusterJob, status: str | None) -> None:
        """An aborted task's Job goes at once; the others stay agent.k8s.keep_finished_sec for their logs."""
        if status == TaskStatus.stopped.value:
            job.kill()

    def _tidy(self) -> None:
        self.k8s.tidy(float(self.cfg.get("agent.k8s.keep_finished_sec")),
                      {run.handle.job_id for run in list(self.running.values()) if hasattr(run.handle, "job_id")})
