"""Pod templates for the Kubernetes glue: a base template (`--template-yaml`: a Pod, a Job, or a bare pod spec) and
per-queue overrides in the shape of the docs' `agentk8sglue` values:

    agentk8sglue:                      # optional: the Helm values' key
      basePodTemplate: {...}           # optional, overrides for every queue
      queues:
        gpu_q:
          templateOverrides:
            resources: {limits: {nvidia.com/gpu: 1}}
            nodeSelector: {nvidia.com/gpu.product: A100-SXM4-40GB-MIG-1g.5gb}
            labels: {...}
            annotations: {...}
            env: [{name: X, value: "1"}]
            tolerations: [...]
          queueSettings:
            maxPods: 2

`resources`, `env` and `volumeMounts` go to the task's container; `labels` and `annotations` to the pod's metadata;
anything else to the pod spec. Dicts merge, `env` entries replace those of the same name, other lists add up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import UserError

CONTAINER_KEYS = ("resources", "env", "volumeMounts", "securityContext", "imagePullPolicy", "image", "workingDir")
META_KEYS = ("labels", "annotations")


@dataclass
class QueueTemplate:
    name: str  # for the task's log: "pod.yaml + gpu_q"
    pod: dict[str, Any]  # a pod template: {metadata, spec}
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class GlueConfig:
    """What `--template-yaml` and `--config` give."""

    base: dict[str, Any]  # the pod template
    base_name: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # queue name -> templateOverrides
    max_pods: dict[str, int] = field(default_factory=dict)  # queue name -> queueSettings.maxPods
    queues: list[str] = field(default_factory=list)  # the queues the config names, in its order
    settings: dict[str, Any] = field(default_factory=dict)  # top-level keys: namespace, maxPods

    def template(self, queue: str) -> QueueTemplate:
        overrides = self.overrides.get(queue) or {}
        name = self.base_name + (f" + {queue} overrides" if overrides else "")
        return QueueTemplate(name, copy.deepcopy(self.base), overrides)


def _yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"Could not read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None


def pod_template(doc: Any, where: str) -> dict[str, Any]:
    """The pod template in a Pod, a Job (or a Job template), or a bare pod spec."""
    if not isinstance(doc, dict):
        raise UserError(f"{where} holds no pod template", hint="Give a Pod, a Job, or a pod spec in YAML")
    kind = doc.get("kind")
    if kind == "Job" or "template" in (doc.get("spec") or {}):
        doc = (doc.get("spec") or {}).get("template") or {}
    elif kind not in (None, "Pod"):
        raise UserError(f"{where} is a {kind}; the glue takes a Pod, a Job or a pod spec")
    if "spec" not in doc and ("containers" in doc or "nodeSelector" in doc or "tolerations" in doc):
        doc = {"spec": doc}
    pod = {"metadata": copy.deepcopy(doc.get("metadata") or {}), "spec": copy.deepcopy(doc.get("spec") or {})}
    for key in ("name", "namespace", "generateName"):
        pod["metadata"].pop(key, None)
    return pod


def load(template_yaml: Path | None, config_yaml: Path | None) -> GlueConfig:
    base: dict[str, Any] = {"metadata": {}, "spec": {"containers": [{"name": "task"}]}}
    name = "the default pod template"
    if template_yaml is not None:
        base, name = pod_template(_yaml(template_yaml), str(template_yaml)), template_yaml.name
    found = GlueConfig(base, name)
    if config_yaml is None:
        return found
    doc = _yaml(config_yaml) or {}
    if not isinstance(doc, dict):
        raise UserError(f"{config_yaml} must be a mapping with `queues:`")
    doc = doc.get("agentk8sglue", doc)
    if doc.get("basePodTemplate"):
        found.base = apply_overrides(found.base, _mapping(doc["basePodTemplate"], f"{config_yaml}: basePodTemplate"))
    if doc.get("template") or doc.get("podTemplate"):
        found.base = pod_template(doc.get("template") or doc.get("podTemplate"), str(config_yaml))
        found.base_name = config_yaml.name
    queues = _mapping(doc.get("queues") or {}, f"{config_yaml}: queues")
    for queue, section in queues.items():
        section = _mapping(section or {}, f"{config_yaml}: queues.{queue}")
        found.queues.append(str(queue))
        found.overrides[str(queue)] = _mapping(section.get("templateOverrides") or {},
                                               f"{config_yaml}: queues.{queue}.templateOverrides")
        limit = (section.get("queueSettings") or {}).get("maxPods")
        if limit is not None:
            try:
                found.max_pods[str(queue)] = int(limit)
            except (TypeError, ValueError):
                raise UserError(f"{config_yaml}: queues.{queue}.queueSettings.maxPods is {limit!r}: give a whole "
                                "number") from None
    found.settings = {k: v for k, v in doc.items() if k in ("namespace", "maxPods")}
    return found


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def task_container(spec: dict[str, Any]) -> dict[str, Any]:
    """The container that runs the task: the template's first one (made when there is none)."""
    containers = spec.setdefault("containers", [])
    if not containers:
        containers.append({"name": "task"})
    containers[0].setdefault("name", "task")
    return containers[0]


def apply_overrides(pod: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`pod` with a queue's templateOverrides merged in (see the module's docstring)."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    meta = pod.setdefault("metadata", {})
    container = task_container(spec)
    for key, value in overrides.items():
        if key in META_KEYS:
            meta[key] = {**(meta.get(key) or {}), **{k: str(v) for k, v in (value or {}).items()}}
        elif key == "env":
            names = {e.get("name") for e in value or []}
            container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + list(value)
        elif key == "resources":  # quantities are strings in the API (`nvidia.com/gpu: 1` is written as a number)
            container[key] = _merge(container.get(key), {part: {k: str(v) for k, v in (amounts or {}).items()}
                                                          for part, amounts in (value or {}).items()})
        elif key in CONTAINER_KEYS:
            container[key] = _merge(container.get(key), value)
        else:
            spec[key] = _merge(spec.get(key), value)
    return pod


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _merge(old.get(key), value)
        return merged
    if isinstance(old, list) and isinstance(new, list):
        return old + new
    return copy.deepcopy(new)
