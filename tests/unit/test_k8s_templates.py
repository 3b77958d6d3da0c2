"""Kubernetes glue: pod templates, the docs' per-queue overrides, and the Job a task becomes (no cluster needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.config import defaults
from conveyor.errors import UserError
from conveyor.runtimes.base import TaskRun
from conveyor.runtimes.bundle import Bundle
from conveyor.runtimes.k8s import K8sRuntime
from conveyor.runtimes.k8s_templates import load

# The docs' examples: GPU limits per queue, MIG devices, a fractional-GPU label, a pod limit
DOCS_CONFIG = """
agentk8sglue:
  queues:
    example_queue_1:
      templateOverrides:
        nodeSelector:
          nvidia.com/gpu.product: A100-SXM4-40GB-MIG-1g.5gb
        resources:
          limits:
            nvidia.com/gpu: 1
    example_queue_2:
      templateOverrides:
        nodeSelector:
          nvidia.com/gpu.product: A100-SXM4-40GB
        resources:
          limits:
            nvidia.com/gpu: 2
    mig_queue:
      templateOverrides:
        resources:
          limits:
            nvidia.com/mig-1g.10gb: 1
    half_gpu:
      templateOverrides:
        labels:
          clearml-injector/fraction: "0.500"
        env:
          - name: EXTRA
            value: "1"
        tolerations:
          - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
      queueSettings:
        maxPods: 2
"""

BASE = """
apiVersion: v1
kind: Pod
metadata: {name: ignored, labels: {team: vision}}
spec:
  hostNetwork: true
  containers:
    - name: main
      image: conveyor/base:bookworm
      imagePullPolicy: Never
      resources: {requests: {cpu: 100m}}
      env: [{name: EXTRA, value: "0"}, {name: KEEP, value: "yes"}]
"""


def runtime(tmp_path: Path, **templates: object) -> K8sRuntime:
    rt = K8sRuntime(defaults(), fetch_task=lambda task_id: {}, namespace="ns", conveyor_image="conveyor/bundle:x")
    rt.worker = "host:k8s"
    rt.bundle = Bundle(tmp_path, "ld-linux-x86-64.so.2", "python/bin/python3.11")
    return rt


def job_for(tmp_path: Path, queue: str, task: dict | None = None) -> dict:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "glue.yaml").write_text(DOCS_CONFIG)
    glue = load(tmp_path / "base.yaml", tmp_path / "glue.yaml")
    rt = runtime(tmp_path)
    rt.bind({"q": glue.template(queue)}, {"q": queue})
    return rt.manifest(TaskRun("0123456789abcdef0123456789abcdef", "q", "host:k8s"), task or {}, "conveyor-job-1")


def test_the_docs_queues_load_with_their_limits(tmp_path: Path) -> None:
    (tmp_path / "glue.yaml").write_text(DOCS_CONFIG)
    glue = load(None, tmp_path / "glue.yaml")
    assert glue.queues == ["example_queue_1", "example_queue_2", "mig_queue", "half_gpu"]
    assert glue.max_pods == {"half_gpu": 2}


def test_each_queue_gets_the_pod_its_overrides_describe(tmp_path: Path) -> None:
    one = job_for(tmp_path, "example_queue_1")["spec"]["template"]
    assert one["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "A100-SXM4-40GB-MIG-1g.5gb"}
    assert one["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "100m"}, "limits": {"nvidia.com/gpu": "1"}}
    two = job_for(tmp_path, "example_queue_2")["spec"]["template"]
    assert two["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    mig = job_for(tmp_path, "mig_queue")["spec"]["template"]
    assert mig["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    half = job_for(tmp_path, "half_gpu")["spec"]["template"]
    assert half["metadata"]["labels"]["clearml-injector/fraction"] == "0.500"
    assert half["metadata"]["labels"]["team"] == "vision"
    env = {e["name"]: e.get("value") for e in half["spec"]["containers"][0]["env"]}
    assert env["EXTRA"] == "1" and env["KEEP"] == "yes"
    assert half["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_task_becomes_a_job_that_brings_conveyor_and_holds_no_secret(tmp_path: Path) -> None:
    job = job_for(tmp_path, "example_queue_1", {"container": {"image": "python:3.11-slim"}})
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"]["conveyor.dev/task-id"] == "0123456789abcdef0123456789abcdef"
    pod = job["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    task = pod["spec"]["containers"][0]
    assert task["image"] == "python:3.11-slim"  # the task's image beats the template's
    assert task["command"][-5:] == ["conveyor.agent.container_start", "execute", "--id",
                                    "0123456789abcdef0123456789abcdef", "--require-queue"]
    assert task["command"][0].startswith("/opt/conveyor/lib/")  # the bundle the init container copied
    init = pod["spec"]["initContainers"][0]
    assert init["image"] == "conveyor/bundle:x" and init["command"][0].startswith("/opt/conveyor-image/lib/")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["conveyor-config"]["secret"]["secretName"].startswith("conveyor-glue-")
    text = json.dumps(job)
    assert "CLEARML_API_SECRET_KEY" not in text and "secret_key" not in text
    env = {e["name"]: e.get("value") for e in task["env"]}
    assert env["CLEARML_CONFIG_FILE"] == "/etc/conveyor/clearml.conf"
    assert env["CLEARML_WORKER_ID"] == "host:k8s:conveyor-job-1"


def test_the_pod_config_has_the_credentials_the_job_does_not(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    conf = rt.pod_config()
    assert "credentials" in conf  # the Secret's file: the pods' way to the server
    assert "k8s {" not in conf and "slurm {" not in conf  # the glues' own settings stay with them


def test_a_template_that_is_not_a_pod_is_named(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    with pytest.raises(UserError, match="is a Service"):
        load(tmp_path / "svc.yaml", None)
    (tmp_path / "bad.yaml").write_text("queues: [1, 2]\n")
    with pytest.raises(UserError, match="queues must be a mapping"):
        load(None, tmp_path / "bad.yaml")
