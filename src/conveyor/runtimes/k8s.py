"""Running `conveyor execute` as Kubernetes Jobs: the Kubernetes glue's runtime.

Each task becomes one `batch/v1` Job (`backoffLimit: 0`, `restartPolicy: Never`) from the glue's pod template with
its queue's overrides (`k8s_templates.py`). Its one container runs in the task's image, or the default, and starts
with the same `conveyor execute --require-queue` as every runtime, from Conveyor's bundle (`bundle.py`): an init
container copies the bundle from the Conveyor image (`agent.k8s.conveyor_image`, or one the glue builds locally from
its own bundle) into an emptyDir, so any image works, a stock `python:3.x` or one without Python at all.
Credentials reach the pod only as a file from a Secret the glue manages (its clearml.conf, mounted read-only), never
in the pod spec's env or command line.

Jobs carry labels naming the glue (a hash of its worker id), the task and the queue; a glue restarted with the same
worker id adopts them by label, and a record per job under the agent folder covers a glue killed while creating one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from conveyor.config import Config, hocon
from conveyor.errors import TaskFailure, UserError
from conveyor.runtimes import image_uses
from conveyor.runtimes.base import Leftover, TaskRun
from conveyor.runtimes.bundle import Bundle, BundleError, current, prepare
from conveyor.runtimes.cluster import ClusterError, ClusterJob, JobEnd, JobRecord, JobView, adopt_jobs
from conveyor.runtimes.k8s_templates import QueueTemplate, apply_overrides, task_container

log = logging.getLogger(__name__)

LABEL_GLUE = "conveyor.dev/glue"
LABEL_TASK = "conveyor.dev/task-id"
LABEL_QUEUE = "conveyor.dev/queue-id"
LABEL_QUEUE_NAME = "conveyor.dev/queue-name"
BUNDLE_DIR = "/opt/conveyor"  # where the task container finds the bundle (an emptyDir the init container fills)
BUNDLE_IN_IMAGE = "/opt/conveyor-image"  # where the Conveyor image holds it
CONFIG_DIR = "/etc/conveyor"  # the Secret's clearml.conf, read-only
START_MODULE = "conveyor.agent.container_start"  # as in containers: what the image lacks first, then execute
# a pod waiting for these never starts: the task fails with the reason
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
# how a pod ends when Kubernetes ended it: the task fails with it
KILLED_REASONS = frozenset({"OOMKilled", "Evicted", "DeadlineExceeded", "Preempting", "NodeLost", "Shutdown"})


def glue_label(worker: str) -> str:
    """A label value naming a glue: its worker id may hold characters a label cannot."""
    return hashlib.sha256(worker.encode()).hexdigest()[:16]


def label_value(text: str) -> str:
    """Any text as a valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._") or "none"


class KubeApi:
    """The Kubernetes API, through the official client, with one cached look at the glue's Jobs and pods."""

    def __init__(self, kubeconfig: str, namespace: str, refresh_sec: float):
        from kubernetes import client, config

        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig)
            else:
                try:
                    config.load_kube_config()
                except config.ConfigException:
                    config.load_incluster_config()
        except (config.ConfigException, OSError) as exc:
            raise UserError(f"No Kubernetes cluster to talk to: {exc}",
                            hint="Set KUBECONFIG or agent.k8s.kubeconfig, or run the glue in a pod with a "
                                 "service account") from None
        self.namespace = namespace
        self.refresh_sec = refresh_sec
        self.core = client.CoreV1Api()
        self.batch = client.BatchV1Api()
        self._jobs: dict[str, Any] = {}  # job name -> V1Job
        self._pods: dict[str, Any] = {}  # job name -> its latest V1Pod
        self._taken = 0.0

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """One API call; an API refusal or an unreachable server becomes ClusterError (404 is the caller's)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kw)
        except ApiException as exc:
            if exc.status == 404:
                raise
            raise ClusterError(f"Kubernetes refused to {what}: {exc.status} {_api_message(exc)}") from None
        except (HTTPError, OSError) as exc:
            raise ClusterError(f"could not reach the Kubernetes API to {what}: {exc}") from None

    def look(self, selector: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(jobs by name, each job's newest pod) with `selector`; cached for refresh_sec."""
        if time.monotonic() - self._taken < self.refresh_sec:
            return self._jobs, self._pods
        jobs = self.call("list Jobs", self.batch.list_namespaced_job, self.namespace, label_selector=selector).items
        pods = self.call("list pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector).items
        self._jobs = {job.metadata.name: job for job in jobs}
        newest: dict[str, Any] = {}
        for pod in pods:
            owner = (pod.metadata.labels or {}).get("job-name", "")
            if owner and (owner not in newest or pod.metadata.creation_timestamp >
                          newest[owner].metadata.creation_timestamp):
                newest[owner] = pod
        self._pods, self._taken = newest, time.monotonic()
        return self._jobs, self._pods

    def forget(self) -> None:
        self._taken = 0.0

    def delete_job(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.call("delete a Job", self.batch.delete_namespaced_job, name, self.namespace,
                      propagation_policy="Background")
        except ApiException:  # 404: gone already
            pass
        self.forget()


def _api_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


class KubeJob(ClusterJob):
    """One task's Job."""

    def __init__(self, runtime: K8sRuntime, record: JobRecord):
        super().__init__(record)
        self.runtime = runtime
        self.ran_in = ""  # the pod seen running the task: if another replaces it, the task's run was killed

    def describe(self) -> str:
        return f"k8s job {self.job_id}"

    def _found(self) -> tuple[Any, Any]:
        jobs, pods = self.runtime.api.look(self.runtime.selector)
        return jobs.get(self.job_id), pods.get(self.job_id)

    def view(self) -> JobView | None:
        job, pod = self._found()
        if job is None:
            return None
        status = job.status
        if (status.succeeded or 0) > 0 or (status.failed or 0) > 0 or _condition(job, "Complete") \
                or _condition(job, "Failed"):
            return JobView("ended", "ended")
        if self.ran_in and (pod is None or pod.metadata.name != self.ran_in):
            return JobView("ended", "replaced")  # its pod was deleted or evicted under the task
        if pod is None:
            return JobView("pending", "no pod yet")
        phase = pod.status.phase or "Pending"
        if phase == "Running":
            self.ran_in = pod.metadata.name
        if phase in ("Succeeded", "Failed"):
            return JobView("ended", phase.lower())
        if phase == "Running":
            return JobView("running", "running", pod.spec.node_name or "", unit=pod.metadata.name)
        waiting = _waiting(pod)
        if waiting is not None:
            reason, message = waiting
            fatal = f"{reason}: {message}" if reason in PULL_FAILURES else ""
            return JobView("pending", f"{reason}: {message}" if message else reason, pod.spec.node_name or "", fatal,
                           pod.metadata.name)
        scheduled = _pod_condition(pod, "PodScheduled")
        if scheduled is not None and scheduled.status == "False":
            return JobView("pending", f"{scheduled.reason}: {scheduled.message}", unit=pod.metadata.name)
        return JobView("pending", "scheduled" if pod.spec.node_name else "waiting to be scheduled",
                       pod.spec.node_name or "", unit=pod.metadata.name)

    def ended(self, last: JobView | None) -> JobEnd:
        job, pod = self._found()
        if job is None:
            return JobEnd(True, f"k8s: the Job {self.job_id} was deleted before its task ended")
        if self.ran_in and (pod is None or pod.metadata.name != self.ran_in):
            return JobEnd(True, f"k8s: pod {self.ran_in} was deleted or evicted while its task ran")
        if pod is None:
            failed = _condition(job, "Failed")
            why = f"{failed.reason}: {failed.message}" if failed is not None else "no pod ran"
            return JobEnd(True, f"k8s: job {self.job_id} failed: {why}")
        reason, code = _terminated(pod)
        failed = _condition(job, "Failed")
        if pod.status.reason in KILLED_REASONS:
            return JobEnd(True, f"k8s: pod {pod.metadata.name} {pod.status.reason}: {pod.status.message or ''}"
                          .rstrip(": "), code or 1)
        if reason in KILLED_REASONS or (failed is not None and failed.reason == "DeadlineExceeded"):
            what = reason if reason in KILLED_REASONS else "DeadlineExceeded"
            return JobEnd(True, f"k8s: pod {pod.metadata.name} {what} (exit code {code})", code or 1)
        return JobEnd(False, f"k8s: pod {pod.metadata.name} {reason or pod.status.phase} (exit code {code})",
                      code if code is not None else 1)

    def _cancel(self) -> None:
        self.runtime.api.delete_job(self.job_id)


def _condition(job: Any, kind: str) -> Any:
    for cond in job.status.conditions or []:
        if cond.type == kind and cond.status == "True":
            return cond
    return None


def _pod_condition(pod: Any, kind: str) -> Any:
    for cond in pod.status.conditions or []:
        if cond.type == kind:
            return cond
    return None


def _waiting(pod: Any) -> tuple[str, str] | None:
    """The reason a container of the pod waits (init containers first), other than plain creation."""
    for status in list(pod.status.init_container_statuses or []) + list(pod.status.container_statuses or []):
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason and waiting.reason not in ("ContainerCreating", "PodInitializing"):
            return waiting.reason, waiting.message or ""
    return None


def _terminated(pod: Any) -> tuple[str, int | None]:
    """How the task container ended: (reason, exit code)."""
    for status in pod.status.container_statuses or []:
        ended = status.state.terminated if status.state else None
        if ended is not None:
            return ended.reason or "", ended.exit_code
    for status in pod.status.init_container_statuses or []:
        ended = status.state.terminated if status.state else None
        if ended is not None and ended.exit_code:
            return f"init container {status.name}: {ended.reason}", ended.exit_code
    return "", None


class K8sRuntime:
    """Tasks as Jobs: one pod template per queue. `bind` gives it the queues' templates before any launch."""

    kind = "k8s"

    def __init__(self, cfg: Config, *, fetch_task: Callable[[str], dict[str, Any]], namespace: str,
                 conveyor_image: str = "", log_line: Callable[[str], None] = log.info):
        self.cfg = cfg
        self.fetch_task = fetch_task
        self.namespace = namespace
        self.conveyor_image = conveyor_image
        self.log_line = log_line
        self._api: KubeApi | None = None
        self.templates: dict[str, QueueTemplate] = {}  # queue id -> template
        self.queue_names: dict[str, str] = {}
        self.worker = ""
        self.bundle: Bundle | None = None

    @property
    def api(self) -> KubeApi:
        """The cluster's API, connected at first use (making a Job's manifest needs none)."""
        if self._api is None:
            self._api = KubeApi(str(self.cfg.get("agent.k8s.kubeconfig") or ""), self.namespace,
                                float(self.cfg.get("agent.k8s.poll_interval_sec")))
        return self._api

    @property
    def selector(self) -> str:
        return f"{LABEL_GLUE}={glue_label(self.worker)}"

    @property
    def secret_name(self) -> str:
        return f"conveyor-glue-{glue_label(self.worker)}"

    def bind(self, templates: dict[str, QueueTemplate], queue_names: dict[str, str]) -> None:
        self.templates, self.queue_names = templates, queue_names

    def describe(self) -> str:
        return f"tasks as Kubernetes Jobs in namespace {self.namespace}"

    def standby_pids(self) -> frozenset[int]:
        return frozenset()

    def drain(self) -> None:
        """Nothing is kept ready for a next task."""

    def template_name(self, queue_id: str) -> str:
        return self.templates[queue_id].name

    def check(self) -> str:
        """The cluster, for the banner; makes the namespace if it is missing and writes the credentials Secret."""
        from kubernetes.client.exceptions import ApiException

        try:
            version = self.api.call("read its version", self._version)
            try:
                self.api.call("read the namespace", self.api.core.read_namespace, self.namespace)
            except ApiException:  # 404: made here
                self.api.call("create the namespace", self.api.core.create_namespace,
                              {"metadata": {"name": self.namespace}})
            except ClusterError as exc:
                if "403" not in str(exc):  # a Role in its namespace only (deploy/kubernetes): it exists
                    raise
            self._write_secret()
        except ClusterError as exc:
            raise UserError(str(exc), hint="Check the kubeconfig and the glue's permissions (deploy/kubernetes "
                                           "has the Role it needs)") from None
        self.bundle = self._prepare_bundle()
        return f"Kubernetes {version}, namespace {self.namespace}, Conveyor image {self.conveyor_image}"

    def _version(self) -> str:
        from kubernetes import client

        return str(client.VersionApi().get_code().git_version)

    # --- the Secret and Conveyor's image --------------------------------------------------------------------------
    def pod_config(self) -> str:
        """The glue's configuration for its pods: its server and credentials, pod-local folders."""
        data = self.cfg.as_dict(masked=False)
        data.pop("conveyor", None)  # server settings
        agent = data.setdefault("agent", {})
        agent.pop("k8s", None)
        agent.pop("slurm", None)
        agent["venvs_dir"] = "/root/.clearml/venvs-builds"
        agent["venvs_cache"]["path"] = ""
        agent["vcs_cache"]["path"] = "/root/.clearml/vcs-cache"
        agent["pip_download_cache"]["path"] = "/root/.clearml/pip-download-cache"
        manager = agent["package_manager"]
        manager["uv_cache_dir"] = "/root/.cache/uv"
        manager["system_site_packages"] = True  # as in containers: the image's own packages stay visible
        agent["python_binary"], agent["default_python"] = "", None
        return "# Written by the Conveyor Kubernetes glue for its pods.\n" + hocon.dump(data) + "\n"

    def _write_secret(self) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"name": self.secret_name, "labels": {LABEL_GLUE: glue_label(self.worker)}},
                "type": "Opaque",
                "data": {"clearml.conf": base64.b64encode(self.pod_config().encode()).decode()}}
        try:
            self.api.call("write the credentials Secret", self.api.core.replace_namespaced_secret,
                          self.secret_name, self.namespace, body)
        except ApiException:
            self.api.call("create the credentials Secret", self.api.core.create_namespaced_secret, self.namespace,
                          body)

    def _prepare_bundle(self) -> Bundle:
        running = current()
        if running is not None:  # a glue in a pod of the Conveyor image: the pods get the same image
            if not self.conveyor_image:
                raise UserError("A glue running from Conveyor's image needs agent.k8s.conveyor_image (that image)",
                                hint="Set CLEARML_AGENT__AGENT__K8S__CONVEYOR_IMAGE in its Deployment")
            return running
        root = Path(str(self.cfg.get("agent.docker_conveyor_env_dir") or "~/.clearml/conveyor-bundles")).expanduser()
        try:
            bundle = prepare(root, log=self.log_line)
        except (BundleError, OSError) as exc:
            raise UserError(f"Could not make Conveyor's bundle for the pods: {exc}") from None
        if not self.conveyor_image:
            self.conveyor_image = build_conveyor_image(bundle)
        return bundle

    # --- jobs -----------------------------------------------------------------------------------------------------
    def manifest(self, run: TaskRun, task: Mapping[str, Any], job_name: str) -> dict[str, Any]:
        """The Job for `run` from its queue's template."""
        assert self.bundle is not None, "check() prepares the bundle before any launch"
        template = self.templates[run.queue_id]
        pod = apply_overrides(copy.deepcopy(template.pod), template.overrides)
        spec = pod.setdefault("spec", {})
        spec["restartPolicy"] = "Never"
        container = task_container(spec)
        image = (task.get("container") or {}).get("image") or container.get("image") \
            or self.cfg.get("agent.default_docker.image")
        if not image:
            raise TaskFailure("the task names no image, its queue's template none, and agent.default_docker.image "
                              "is empty")
        container["image"] = image
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container["command"] = self.bundle.module_argv(START_MODULE, "execute", "--id", run.task_id,
                                                       "--require-queue", at=BUNDLE_DIR)
        container.pop("args", None)
        env = [e for e in container.get("env") or [] if e.get("name") not in _OURS]
        env += [{"name": "CLEARML_CONFIG_FILE", "value": f"{CONFIG_DIR}/clearml.conf"},
                {"name": "CLEARML_WORKER_ID", "value": f"{self.worker}:{job_name}"},
                {"name": "CONVEYOR_K8S_GLUE", "value": self.worker},
                {"name": "CLEARML_TASK_ID", "value": run.task_id},
                {"name": "CLEARML_DOCKER_IMAGE", "value": str(image)}]
        container["env"] = env
        container["volumeMounts"] = [*(container.get("volumeMounts") or []),
                                     {"name": "conveyor-bundle", "mountPath": BUNDLE_DIR},
                                     {"name": "conveyor-config", "mountPath": CONFIG_DIR, "readOnly": True}]
        spec["volumes"] = [*(spec.get("volumes") or []), {"name": "conveyor-bundle", "emptyDir": {}},
                           {"name": "conveyor-config", "secret": {"secretName": self.secret_name,
                                                                  "defaultMode": 0o400}}]
        copier = self.bundle.python_argv(at=BUNDLE_IN_IMAGE) + [
            "-c", f"import shutil; shutil.copytree({BUNDLE_IN_IMAGE!r}, {BUNDLE_DIR!r}, symlinks=True, "
                  "dirs_exist_ok=True)"]
        spec["initContainers"] = [{"name": "conveyor-bundle", "image": self.conveyor_image,
                                   "imagePullPolicy": "IfNotPresent", "command": copier,
                                   "volumeMounts": [{"name": "conveyor-bundle", "mountPath": BUNDLE_DIR}]},
                                  *(spec.get("initContainers") or [])]
        labels = {LABEL_GLUE: glue_label(self.worker), LABEL_TASK: run.task_id, LABEL_QUEUE: run.queue_id,
                  LABEL_QUEUE_NAME: label_value(self.queue_names.get(run.queue_id, ""))}
        meta = pod.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **labels}
        meta.pop("name", None)
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": job_name, "namespace": self.namespace, "labels": labels,
                             "annotations": {"conveyor.dev/worker": self.worker}},
                "spec": {"backoffLimit": 0, "template": pod}}

    def launch(self, run: TaskRun, env: Mapping[str, str]) -> KubeJob:
        from kubernetes.client.exceptions import ApiException

        job_name = f"conveyor-{run.task_id[:32].lower()}-{secrets.token_hex(3)}"
        record = JobRecord(run.task_id, run.queue_id, self.worker, kind=self.kind)
        record.save_quietly()  # before the Job: a glue killed meanwhile finds it by its labels
        try:
            body = self.manifest(run, self.fetch_task(run.task_id), job_name)
            try:
                self.api.call("create a Job", self.api.batch.create_namespaced_job, self.namespace, body)
            except ApiException as exc:  # 404: the namespace went away
                raise ClusterError(f"Kubernetes refused the Job: {exc.status} {_api_message(exc)}") from None
            except (ValueError, TypeError) as exc:  # the client's own check of the manifest: the template's fault
                raise TaskFailure(f"the Job for this task is not valid (its pod template?): "
                                  f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}") from None
            except ClusterError as exc:
                if "422" in str(exc) or "400" in str(exc):  # the template's fault: this task fails
                    raise TaskFailure(str(exc)) from None
                raise
        except BaseException:
            record.remove()
            raise
        self.api.forget()
        image_uses.record(self.cfg, "docker", [self.conveyor_image])  # the pods' init container runs it
        record.job_id = job_name
        record.save_quietly()
        return KubeJob(self, record)

    def adopt(self, worker: str) -> list[Leftover]:
        """The Jobs a previous glue of this worker id created (by label), and records of Jobs it was creating."""
        self.worker = worker
        jobs, _pods = self.api.look(self.selector)
        active = {(job.metadata.labels or {}).get(LABEL_TASK, ""): (name, (job.metadata.labels or {}).get(
            LABEL_QUEUE, "")) for name, job in jobs.items() if not (job.status.succeeded or job.status.failed)}
        return adopt_jobs(self.kind, worker, active, lambda record: KubeJob(self, record))

    def tidy(self, keep_sec: float, tracked: set[str]) -> None:
        """Delete the glue's finished Jobs older than `keep_sec` that no run still watches."""
        jobs, _pods = self.api.look(self.selector)
        now = time.time()
        for name, job in jobs.items():
            if name in tracked:
                continue
            done = job.status.completion_time or next(
                (c.last_transition_time for c in job.status.conditions or [] if c.status == "True"), None)
            if done is not None and now - done.timestamp() >= keep_sec:
                log.info("deleting the finished Job %s", name)
                self.api.delete_job(name)


_OURS = {"CLEARML_CONFIG_FILE", "CLEARML_WORKER_ID", "CONVEYOR_K8S_GLUE", "CLEARML_TASK_ID", "CLEARML_DOCKER_IMAGE",
         "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"}


def build_conveyor_image(bundle: Bundle, tag: str | None = None) -> str:
    """A local image holding the bundle at BUNDLE_IN_IMAGE (nothing else: the bundle brings its own loader and
    libraries), for the pods' init container; built with the local Docker. Push it for a cluster of several nodes."""
    tag = tag or f"conveyor/bundle:{bundle.host_dir.name[:40]}"
    inspect = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if inspect.returncode == 0:
        return tag
    # nothing but the bundle; its entry point is Conveyor itself (`docker run IMAGE k8s --queue q`, a glue's pod)
    entry = json.dumps(bundle.module_argv("conveyor", at=BUNDLE_IN_IMAGE))
    dockerfile = f"FROM scratch\nCOPY . {BUNDLE_IN_IMAGE}/\nENTRYPOINT {entry}\n"
    try:
        built = subprocess.run(["docker", "build", "-q", "-t", tag, "-f", "-", str(bundle.host_dir)],
                               input=dockerfile.encode(), capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"Could not build the Conveyor image for the pods: {exc}",
                        hint="Set agent.k8s.conveyor_image to an image made by `conveyor k8s --build-image` "
                             "and pushed where the cluster pulls from") from None
    if built.returncode != 0:
        raise UserError(f"Could not build the Conveyor image for the pods: {built.stderr.decode()[-500:]}",
                        hint="Set agent.k8s.conveyor_image, or make `docker build` work here")
    return tag
