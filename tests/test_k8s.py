"""The Kubernetes glue (`conveyor k8s`) against a real Kubernetes 1.20 (`.ci/k8s.sh`): Jobs from templates and the
docs' per-queue overrides, the task's life while its pod waits and runs, faults, limits, restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import gluekit
from agentkit import DaemonProcess, agent_env, log_text, wait_final, wait_for_line
from conftest import ServerProcess
from gluekit import no_glue_left  # noqa: F401 - the fixture
from k8skit import K8s, k8s, namespace  # noqa: F401 - fixtures

IMAGE = "conveyor/base:bookworm"  # built locally by .ci/run; no registry here
# hostNetwork: pods reach the test server on 127.0.0.1 (no CNI on this cluster)
BASE = {"apiVersion": "v1", "kind": "Pod",
        "spec": {"hostNetwork": True, "containers": [{"name": "task", "image": IMAGE, "imagePullPolicy": "Never"}]}}
def start_glue(server: ServerProcess, tmp_path: Path, k8s: K8s, ns: str, queues: list[str], *args: str,
               config: dict[str, Any] | None = None, base: dict[str, Any] | None = None,
               keep_finished_sec: int = 600) -> DaemonProcess:
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(with_repos(base or BASE, tmp_path)))
    flags = ["--template-yaml", str(tmp_path / "pod.yaml")]
    if config is not None:
        (tmp_path / "glue.yaml").write_text(yaml.safe_dump(config))
        flags += ["--config", str(tmp_path / "glue.yaml")]
    env = agent_env(server, tmp_path, KUBECONFIG=k8s.kubeconfig, CLEARML_WORKER_NAME=f"g{time.monotonic_ns() % 10**9}",
                    CLEARML_AGENT__AGENT__K8S__PENDING_QUEUE=f"k8s_pending_{ns}"[-60:],
                    CLEARML_AGENT__AGENT__K8S__KEEP_FINISHED_SEC=str(keep_finished_sec))
    return gluekit.start(server, tmp_path, "k8s", "--queue", *queues, "--namespace", ns, "--create-queue", *flags,
                         *args, env=env, start_timeout=240)


def with_repos(pod: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The pod template with the test's folder at the same path: its tasks clone file:// repositories from there."""
    pod = json.loads(json.dumps(pod))
    spec = pod["spec"]
    spec.setdefault("volumes", []).append({"name": "test-files", "hostPath": {"path": str(tmp_path)}})
    spec["containers"][0].setdefault("volumeMounts", []).append({"name": "test-files", "mountPath": str(tmp_path)})
    return pod


def task_in(server: ServerProcess, tmp_path: Path, queue: str, code: str = "print('hello from k8s')\n",
            **fields: Any) -> str:
    return gluekit.task_in(server, tmp_path, queue, code, **fields)


def job_of(client: Any, task: str, timeout: float = 60) -> str:
    return gluekit.job_property(client, task, "k8s-job", timeout)


def wait_message(client: Any, task: str, text: str, timeout: float = 60) -> dict[str, Any]:
    return gluekit.wait_task(client, task, text, timeout)


def job_gone(k8s: K8s, ns: str, name: str, timeout: float = 60) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            k8s.batch.read_namespaced_job(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.5)
    raise AssertionError(f"the Job {name} was not deleted")


def test_a_task_runs_to_completed_through_a_job(k8s: K8s, namespace: str, sqlite_server: ServerProcess,
                                                tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["k8s_q"])
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "k8s_q")
    doc = wait_final(client, task, timeout=240)
    assert doc["status"] == "completed", (doc.get("status_reason"), log_text(client, task), glue.output())
    assert "hello from k8s" in log_text(client, task)
    job = k8s.batch.read_namespaced_job(job_of(client, task), namespace)
    props = client.call("tasks.get_by_id", {"task": task})["task"]["hyperparams"]["properties"]
    assert props["k8s-pod"]["value"].startswith(job.metadata.name + "-")  # the Job's pod, recorded too
    assert job.spec.backoff_limit == 0 and job.metadata.labels["conveyor.dev/task-id"] == task
    pod = job.spec.template.spec
    assert pod.restart_policy == "Never" and pod.init_containers[0].name == "conveyor-bundle"
    # credentials only in the Secret: nothing of them in the Job
    key, secret = sqlite_server.credentials()
    text = json.dumps(k8s.api_client.sanitize_for_serialization(job))
    assert key not in text and secret not in text
    status = subprocess.run([sys.executable, "-m", "conveyor", "k8s", "--status", "--namespace", namespace],
                            capture_output=True, text=True, env=glue.env).stdout
    assert task in status, status
    glue.stop()


# a minute of pods; the per-queue overrides and max_pods are also in tests/unit/test_k8s_templates.py
@pytest.mark.slow
def test_two_queues_get_the_pods_of_their_templates_and_max_pods_holds(k8s: K8s, namespace: str,
                                                                       sqlite_server: ServerProcess,
                                                                       tmp_path: Path) -> None:
    config = {"agentk8sglue": {"queues": {
        "small_q": {"templateOverrides": {"resources": {"limits": {"cpu": "500m", "memory": "512Mi"}},
                                          "labels": {"size": "small"}, "env": [{"name": "SIZE", "value": "small"}]},
                    "queueSettings": {"maxPods": 1}},
        "big_q": {"templateOverrides": {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                                        "labels": {"size": "big"}}}}}}
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["small_q", "big_q"], config=config)
    client = sqlite_server.client()
    code = "import os, time\nprint('size', os.environ.get('SIZE', 'none'), flush=True)\ntime.sleep(3)\n"
    small = [task_in(sqlite_server, tmp_path, "small_q", code) for _ in range(3)]
    big = task_in(sqlite_server, tmp_path, "big_q", code)
    most = 0
    deadline = time.time() + 300
    while not all(client.call("tasks.get_by_id", {"task": t})["task"]["status"] in ("completed", "failed")
                  for t in [*small, big]):
        assert time.time() < deadline, glue.output()
        active = [j for j in k8s.batch.list_namespaced_job(
            namespace, label_selector="conveyor.dev/queue-name=small_q").items
            if not (j.status.succeeded or j.status.failed)]
        most = max(most, len(active))
        time.sleep(0.3)
    assert most == 1, f"maxPods 1: {most} small Jobs at once"
    for task in [*small, big]:
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
        assert doc["status"] == "completed", (doc.get("status_reason"), glue.output())
    assert "size small" in log_text(client, small[0]) and "size none" in log_text(client, big)
    big_pod = k8s.batch.read_namespaced_job(job_of(client, big), namespace).spec.template
    assert big_pod.spec.containers[0].resources.limits == {"cpu": "1", "memory": "1Gi"}
    assert big_pod.metadata.labels["size"] == "big"
    small_pod = k8s.batch.read_namespaced_job(job_of(client, small[0]), namespace).spec.template
    assert small_pod.spec.containers[0].resources.limits == {"cpu": "500m", "memory": "512Mi"}
    assert small_pod.metadata.labels["size"] == "small"
    glue.stop()


def test_an_unschedulable_pod_shows_why_and_an_abort_deletes_its_job(k8s: K8s, namespace: str,
                                                                      sqlite_server: ServerProcess,
                                                                      tmp_path: Path) -> None:
    config = {"queues": {"gpu_q": {"templateOverrides": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}}}
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["gpu_q"], config=config)
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "gpu_q")
    job = job_of(client, task)
    doc = wait_message(client, task, "Unschedulable")
    assert doc["status"] == "queued" and "nvidia.com/gpu" in doc["status_message"], doc["status_message"]
    client.call("tasks.stop", {"task": task})
    job_gone(k8s, namespace, job)
    assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "stopped"
    glue.stop()


def test_an_image_that_cannot_be_pulled_fails_the_task(k8s: K8s, namespace: str, sqlite_server: ServerProcess,
                                                       tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["k8s_q"])
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "k8s_q", container={"image": "conveyor/no-such-image:1"})
    doc = wait_final(client, task, timeout=120)
    assert doc["status"] == "failed", doc.get("status_reason")
    assert "ErrImageNeverPull" in doc["status_reason"] or "ImagePull" in doc["status_reason"], doc["status_reason"]
    glue.stop()


def test_abort_while_running_stops_the_task_and_deletes_its_job(k8s: K8s, namespace: str,
                                                                sqlite_server: ServerProcess, tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["k8s_q"])
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "k8s_q", "import time\nprint('running', flush=True)\ntime.sleep(300)\n")
    wait_for_line(client, task, "running", timeout=240)
    job = job_of(client, task)
    workers = [w["id"] for w in client.call("workers.get_all", {})["workers"]]
    assert any(w.endswith(f":{job}") for w in workers), workers
    client.call("tasks.stop", {"task": task})
    doc = wait_final(client, task, timeout=60)
    assert doc["status"] == "stopped", doc.get("status_reason")
    job_gone(k8s, namespace, job)
    glue.stop()


def test_a_glue_killed_and_restarted_runs_each_of_6_tasks_once(k8s: K8s, namespace: str,
                                                              sqlite_server: ServerProcess, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    base = json.loads(json.dumps(BASE))
    base["spec"]["volumes"] = [{"name": "runs", "hostPath": {"path": str(runs)}}]
    base["spec"]["containers"][0]["volumeMounts"] = [{"name": "runs", "mountPath": "/runs"}]
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["k8s_q"], "--max-pods", "2", base=base,
                      keep_finished_sec=3)
    client = sqlite_server.client()
    code = ("import os, time\nopen('/runs/' + os.environ['CLEARML_TASK_ID'] + '.' + str(time.time_ns()), 'w')\n"
            "time.sleep(2)\nprint('counted', flush=True)\n")
    tasks = [task_in(sqlite_server, tmp_path, "k8s_q", code) for _ in range(6)]
    deadline = time.time() + 240
    while sum(1 for t in tasks if client.call("tasks.get_by_id", {"task": t})["task"]["status"] != "queued") < 2:
        assert time.time() < deadline, glue.output()
        time.sleep(0.2)
    glue.proc.send_signal(signal.SIGKILL)
    glue.proc.wait()
    glue = gluekit.restart(glue, sqlite_server, tmp_path, start_timeout=240)
    for task in tasks:
        doc = wait_final(client, task, timeout=300)
        assert doc["status"] == "completed", (doc.get("status_reason"), glue.output())
    counted = sorted(p.name.split(".")[0] for p in runs.iterdir())
    assert counted == sorted(tasks), "each task runs exactly once"
    assert "adopted task" in glue.output(), glue.output()
    deadline = time.time() + 30  # finished Jobs go after agent.k8s.keep_finished_sec
    while k8s.batch.list_namespaced_job(namespace).items:
        assert time.time() < deadline, [j.metadata.name for j in k8s.batch.list_namespaced_job(namespace).items]
        time.sleep(1)
    glue.stop()


def test_a_pod_deleted_under_its_task_fails_the_task_with_the_reason(k8s: K8s, namespace: str,
                                                                     sqlite_server: ServerProcess,
                                                                     tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, k8s, namespace, ["k8s_q"])
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "k8s_q", "import time\nprint('running', flush=True)\ntime.sleep(300)\n")
    wait_for_line(client, task, "running", timeout=240)
    job = job_of(client, task)
    pod = k8s.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items[0].metadata.name
    k8s.core.delete_namespaced_pod(pod, namespace, grace_period_seconds=1)
    doc = wait_final(client, task, timeout=90)
    deadline = time.time() + 20  # the glue's word comes after the executor's SIGTERM
    while doc["status"] != "failed" and time.time() < deadline:
        time.sleep(0.5)
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "failed" and doc["status_reason"].startswith("k8s:"), doc.get("status_reason")
    glue.stop()


DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def test_the_deploy_manifests_run_a_glue_and_a_service_daemon(k8s: K8s, namespace: str,
                                                              sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """`kubectl apply -k` of deploy/kubernetes (through an overlay with this cluster's images, host network and the
    server's credentials): a task through the glue's Deployment, another through the daemon's."""
    import shutil

    tag = subprocess.run([sys.executable, "-m", "conveyor", "k8s", "--build-image"], capture_output=True, text=True,
                         env=agent_env(sqlite_server, tmp_path), check=True).stdout.strip()
    base = tmp_path / "base"
    shutil.copytree(DEPLOY, base)
    key, secret = sqlite_server.credentials()
    (base / "credentials.env").write_text(f"CLEARML_API_HOST={sqlite_server.url}\nCLEARML_API_ACCESS_KEY={key}\n"
                                          f"CLEARML_API_SECRET_KEY={secret}\n")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    name, _, version = tag.partition(":")
    pod = with_repos(BASE, tmp_path)
    patches = [
        {"target": {"kind": "Deployment", "name": "conveyor-k8s-glue"}, "patch": yaml.safe_dump([
            {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
            {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
             "value": {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}},  # no kube-proxy here
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
             "value": {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}},
            {"op": "replace", "path": "/spec/template/spec/containers/0/env/1/value", "value": tag}])},
        {"target": {"kind": "Deployment", "name": "conveyor-daemon"}, "patch": yaml.safe_dump([
            {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
            {"op": "add", "path": "/spec/template/spec/initContainers/0/imagePullPolicy", "value": "Never"},
            {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": IMAGE},
            {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
            {"op": "add", "path": "/spec/template/spec/volumes/-",
             "value": {"name": "test-files", "hostPath": {"path": str(tmp_path)}}},
            {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
             "value": {"name": "test-files", "mountPath": str(tmp_path)}}])},
        {"target": {"kind": "ConfigMap", "name": "conveyor-pod-template"}, "patch": yaml.safe_dump([
            {"op": "replace", "path": "/data/pod.yaml", "value": yaml.safe_dump(pod)}])}]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": ["../base"], "images": [{"name": "conveyor/bundle", "newName": name, "newTag": version}],
        "patches": patches}))
    applied = subprocess.run(["kubectl", "--kubeconfig", k8s.kubeconfig, "apply", "-k", str(overlay)],
                             capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    client = sqlite_server.client()
    deadline = time.time() + 180
    while not {"k8s_q", "services"} <= {q["name"] for q in client.call("queues.get_all", {})["queues"]}:
        assert time.time() < deadline, subprocess.run(
            ["kubectl", "--kubeconfig", k8s.kubeconfig, "-n", namespace, "logs", "deploy/conveyor-k8s-glue"],
            capture_output=True, text=True).stdout[-3000:]
        time.sleep(1)
    through_glue = task_in(sqlite_server, tmp_path, "k8s_q")
    through_daemon = task_in(sqlite_server, tmp_path, "services")
    for task in (through_glue, through_daemon):
        doc = wait_final(client, task, timeout=300)
        assert doc["status"] == "completed", (doc.get("status_reason"), log_text(client, task)[-2000:])
    assert "k8s-job" in client.call("tasks.get_by_id", {"task": through_glue})["task"]["hyperparams"]["properties"]
