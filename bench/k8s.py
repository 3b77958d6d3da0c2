"""Kubernetes glue benchmark: what `conveyor k8s` adds on top of Kubernetes itself, on a real Kubernetes.

    python bench/k8s.py [--samples 10]

A real server (SQLite) and the Kubernetes glue serving one queue on a fresh namespace, with a plain pod template
(`hostNetwork: true` to reach the server on 127.0.0.1, the local image `conveyor/base:bookworm` with
`imagePullPolicy: Never`, and the run's folder mounted at the same path so that tasks clone their file:// repository),
against the single-node Kubernetes this machine runs (`.ci/k8s.sh`, KUBECONFIG or /var/lib/conveyor-k8s/kubeconfig).

Latency: enqueue → the task's first printed line in its log (`events.get_task_log` polled every 20 ms), through the
glue. The reference, measured in the same run and interleaved with it (glue, bare, glue, bare, …) so that any drift
hits both: the task enqueued in a queue nobody serves, then a bare Job created with the Python client, timed from the
same enqueue call. The bare Job is the Job the glue created for the glue sample just before, read back
(`read_namespaced_job`) and rewritten for the new task: a new name, none of the glue's labels or annotations (the
glue never sees it), the new task id in the command (`conveyor execute --id T --require-queue`) and in
CLEARML_TASK_ID, a worker id of our own; same image, same init container (Conveyor's bundle image), same volumes and
the glue's credentials Secret. The glue's overhead is the difference of the medians.

One warm-up task through the glue and one bare Job run before anything is measured (the glue builds Conveyor's bundle
and its image when it starts; the first pods warm the node's page cache and the image layers). Each sample starts on
an idle namespace: the run waits until every Job there has ended. The namespace, and with it every Job of this run,
is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import latency as timing  # noqa: E402

from agentkit import DaemonProcess, agent_env, create_task, make_repo  # noqa: E402
from conftest import ServerProcess  # noqa: E402

FIRST_LINE = timing.FIRST_LINE
TRAIN = f"print({FIRST_LINE!r}, flush=True)\n"
IMAGE = "conveyor/base:bookworm"  # built locally by .ci/run; no registry here
KUBECONFIG = os.environ.get("KUBECONFIG") or "/var/lib/conveyor-k8s/kubeconfig"
BARE_WORKER = "bench-bare"
OUR_LABELS = ("conveyor.dev/", "controller-uid", "job-name")  # the glue's, and those Kubernetes adds to a Job's pods


def pod_template(root: Path) -> dict[str, Any]:
    """The pod template of tests/test_k8s.py (BASE with `with_repos`): the run's folder at the same path."""
    return {"apiVersion": "v1", "kind": "Pod", "spec": {
        "hostNetwork": True,
        "containers": [{"name": "task", "image": IMAGE, "imagePullPolicy": "Never",
                        "volumeMounts": [{"name": "bench-files", "mountPath": str(root)}]}],
        "volumes": [{"name": "bench-files", "hostPath": {"path": str(root)}}]}}


class Bench:
    def __init__(self, root: Path):
        from kubernetes import client, config

        self.root = root
        self.api_client = config.new_client_from_config(config_file=KUBECONFIG)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.namespace = f"bench-k8s-{os.getpid()}-{secrets.token_hex(3)}"
        self.server: ServerProcess | None = None
        self.glues: list[DaemonProcess] = []
        self.ns_made = False

    def start(self) -> None:
        self.server = ServerProcess(self.root / "home").start()
        self.client = self.server.client()
        self.make_namespace()

    def make_namespace(self) -> None:
        """The namespace with its default service account: a pod created before it exists is refused."""
        from kubernetes.client.exceptions import ApiException

        self.core.create_namespace({"metadata": {"name": self.namespace}})
        self.ns_made = True
        deadline = time.monotonic() + 30
        while True:
            try:
                self.core.read_namespaced_service_account("default", self.namespace)
                return
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def glue(self, queue: str) -> DaemonProcess:
        assert self.server is not None
        template = self.root / "pod.yaml"
        template.write_text(yaml.safe_dump(pod_template(self.root)))
        env = agent_env(self.server, self.root, KUBECONFIG=KUBECONFIG,
                        CLEARML_WORKER_NAME=f"bench{time.monotonic_ns() % 10**9}",
                        CLEARML_AGENT__AGENT__K8S__PENDING_QUEUE=f"k8s_pending_{self.namespace}"[-60:],
                        CLEARML_AGENT__AGENT__K8S__KEEP_FINISHED_SEC="3600")  # its Jobs stay: the bare ones copy them
        glue = DaemonProcess(self.server, self.root, "--queue", queue, "--namespace", self.namespace,
                             "--create-queue", "--template-yaml", str(template), env=env, command="k8s",
                             start_timeout=300)
        self.glues.append(glue)
        return glue

    def queue_id(self, name: str, create: bool = False) -> str:
        if create:
            self.client.call("queues.create", {"name": name})
        return str(self.client.call("queues.get_all", {"name": f"^{name}$"})["queues"][0]["id"])

    def task(self, bare: Path, name: str) -> str:
        return create_task(self.client, name=name, repository=f"file://{bare}")

    def enqueue(self, task: str, queue_id: str) -> None:
        self.client.call("tasks.enqueue", {"task": task, "queue": queue_id})

    def job_of(self, task: str, timeout: float = 60) -> str:
        """The glue's Job for `task` (the task's `k8s-job` property)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            props = self.client.call("tasks.get_by_id", {"task": task})["task"].get("hyperparams", {}) \
                .get("properties", {})
            if "k8s-job" in props:
                return str(props["k8s-job"]["value"])
            time.sleep(0.2)
        raise RuntimeError(f"task {task} never got a Job")

    def bare_job(self, glue_job: str, glue_task: str, task: str) -> dict[str, Any]:
        """The glue's Job `glue_job` (made for `glue_task`), rewritten for `task` with none of the glue's marks."""
        job = self.api_client.sanitize_for_serialization(self.batch.read_namespaced_job(glue_job, self.namespace))
        spec = job["spec"]
        spec.pop("selector", None)  # Kubernetes makes a new one (controller-uid) for the new Job
        spec.pop("manualSelector", None)
        meta = spec["template"].setdefault("metadata", {})
        meta["labels"] = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith(OUR_LABELS)}
        meta.pop("annotations", None)
        spec = json.loads(json.dumps(spec).replace(glue_task, task))  # the command's --id and CLEARML_TASK_ID
        name = f"bare-{task[:32].lower()}-{secrets.token_hex(3)}"
        for container in spec["template"]["spec"]["containers"]:
            for env in container.get("env") or []:
                if env["name"] == "CLEARML_WORKER_ID":
                    env["value"] = f"{BARE_WORKER}:{name}"
                elif env["name"] == "CONVEYOR_K8S_GLUE":
                    env["value"] = BARE_WORKER
        if glue_task in json.dumps(spec) or task not in json.dumps(spec["template"]["spec"]["containers"]):
            raise RuntimeError(f"the rewritten Job still names {glue_task} or not {task}")
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": self.namespace},
                "spec": spec}

    def first_line(self, task: str, sent: float) -> float:
        return timing.first_line(self.client, task, sent, 240)

    def settle(self, timeout: float = 120) -> None:
        """Until every Job in the namespace has ended, so that each sample starts on an idle node."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.batch.list_namespaced_job(self.namespace).items
            if all(job.status.succeeded or job.status.failed for job in jobs):
                return
            time.sleep(0.1)
        print(f"  ! Jobs still running in {self.namespace} after {timeout:.0f} s")

    def cleanup(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for glue in self.glues:
            glue.stop()
        if self.ns_made:
            try:
                self.core.delete_namespace(self.namespace, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    print(f"could not delete the namespace {self.namespace}: {exc.status} {exc.reason}")
        if self.server is not None:
            self.server.stop()
        self.api_client.close()


# --- latency ----------------------------------------------------------------------------------------------------
def through_glue(bench: Bench, bare: Path, queue_id: str, name: str) -> tuple[float, str]:
    task = bench.task(bare, name)
    sent = time.monotonic()
    bench.enqueue(task, queue_id)
    return bench.first_line(task, sent), task


def through_bare_job(bench: Bench, bare: Path, queue_id: str, name: str, glue_task: str) -> float:
    """A task enqueued where nobody serves it, then a bare Job for it: the glue's Job for `glue_task`, rewritten
    (read before the clock starts)."""
    task = bench.task(bare, name)
    glue_job = bench.job_of(glue_task)
    template = bench.bare_job(glue_job, glue_task, "0" * len(task))  # read and checked off the clock
    sent = time.monotonic()
    bench.enqueue(task, queue_id)
    body = json.loads(json.dumps(template).replace("0" * len(task), task))
    bench.batch.create_namespaced_job(bench.namespace, body)
    return bench.first_line(task, sent)


def latency(bench: Bench, samples: int) -> tuple[list[float], list[float]]:
    _, bare = make_repo(bench.root / "repo-first", {"train.py": TRAIN})
    bench.glue("bench_q")
    glue_q = bench.queue_id("bench_q")
    bare_q = bench.queue_id("bare_q", create=True)  # nobody serves it: the bare Jobs' tasks wait there
    print("warm-up: one task through the glue, one bare Job (not counted)")
    _, last = through_glue(bench, bare, glue_q, "warm-up glue")
    bench.settle()
    through_bare_job(bench, bare, bare_q, "warm-up bare", last)
    bench.settle()
    glue: list[float] = []
    ref: list[float] = []
    for i in range(samples):
        seconds, last = through_glue(bench, bare, glue_q, f"latency-glue-{i}")
        glue.append(seconds)
        bench.settle()
        ref.append(through_bare_job(bench, bare, bare_q, f"latency-bare-{i}", last))
        bench.settle()
        print(f"  sample {i + 1}/{samples}: glue {glue[-1]:.2f} s, bare Job {ref[-1]:.2f} s", flush=True)
    bench.glues.pop().stop()
    return glue, ref


# --- figures ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10, help="latency samples per side")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, `kill`: the finally below still cleans up
    root = Path(tempfile.mkdtemp(prefix="conveyor-k8s-"))
    bench = Bench(root)
    try:
        from kubernetes import client

        version = client.VersionApi(bench.api_client).get_code().git_version
        nodes = [node.metadata.name for node in bench.core.list_node().items]
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; kubernetes "
              f"{version}, node(s): {' '.join(nodes)}; namespace {bench.namespace}")
        bench.start()
        glue, ref = latency(bench, args.samples)
        overhead = statistics.median(glue) - statistics.median(ref)
        print("latency, enqueue -> first line in the task's log (one warm-up each):")
        print(f"  through the glue:          {timing.spread(glue)}")
        print(f"  reference, bare Job:       {timing.spread(ref)}")
        print(f"  glue overhead: {overhead:+.2f} s on the median "
              f"({statistics.median(glue) / statistics.median(ref):.2f}x the bare Job)")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second `kill` does not cut the cleanup short
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
