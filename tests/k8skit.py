"""Helpers for Kubernetes tests: a real single-node Kubernetes 1.20.2, as `.ci/k8s.sh up` starts it.

Without a usable cluster the tests skip here, and fail under CI (`.ci/run` runs `.ci/k8s.sh up`).

Pods on this cluster use local images (`imagePullPolicy: Never`, e.g. conveyor/base:bookworm) and `hostNetwork: true`
to reach a test server on 127.0.0.1: there is no kube-proxy and no CNI (reference/runtimes.md §5.6).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import unavailable

# where .ci/k8s.sh writes the kubeconfig; KUBECONFIG, when set, wins
DEFAULT_KUBECONFIG = "/var/lib/conveyor-k8s/kubeconfig"


def _unavailable(reason: str) -> None:
    unavailable(reason, '.ci/run must start it (.ci/k8s.sh up)')


def kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG


@dataclass
class K8s:
    """The cluster's kubeconfig and `kubernetes` client API objects loaded from it."""

    kubeconfig: str
    api_client: Any  # kubernetes.client.ApiClient
    core: Any  # kubernetes.client.CoreV1Api
    batch: Any  # kubernetes.client.BatchV1Api


def _client(path: str) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=path)


def require_k8s() -> None:
    """Returns when the kubeconfig exists, the API answers and a node is Ready; skips (fails under CI) otherwise."""
    try:
        from kubernetes import client
    except ImportError:
        _unavailable("the Python package `kubernetes` is not installed")
        return
    path = kubeconfig_path()
    if not os.path.isfile(path):
        _unavailable(f"no kubeconfig at {path}")
        return
    try:
        api = _client(path)
    except Exception as exc:
        _unavailable(f"kubeconfig {path} does not load: {exc}")
        return
    try:
        nodes = client.CoreV1Api(api).list_node(_request_timeout=10).items
    except Exception as exc:
        _unavailable(f"the Kubernetes API of {path} does not answer: {exc}")
        return
    finally:
        api.close()
    ready = [
        node.metadata.name
        for node in nodes
        if any(cond.type == "Ready" and cond.status == "True" for cond in (node.status.conditions or []))
    ]
    if not ready:
        names = ", ".join(node.metadata.name for node in nodes) or "none"
        _unavailable(f"no Kubernetes node is Ready (nodes: {names})")


def namespace_name(test_name: str) -> str:
    """A fresh DNS-1123 label (≤ 63 chars) for a test: `t-<test name>-<random>`."""
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    suffix = secrets.token_hex(3)
    base = base[: 63 - len("t--") - len(suffix)].rstrip("-")
    return f"t-{base}-{suffix}" if base else f"t-{suffix}"


@pytest.fixture
def k8s() -> Iterator[K8s]:
    """A usable cluster: the kubeconfig path with CoreV1Api and BatchV1Api clients loaded from it."""
    require_k8s()
    from kubernetes import client

    path = kubeconfig_path()
    api = _client(path)
    try:
        yield K8s(kubeconfig=path, api_client=api, core=client.CoreV1Api(api), batch=client.BatchV1Api(api))
    finally:
        api.close()


@pytest.fixture
def namespace(k8s: K8s, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, with its default service account (pods need it); deleted at teardown
    without waiting for the deletion to finish."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    name = namespace_name(request.node.name)
    k8s.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        # the controller manager creates the service account `default` a moment after the namespace; a pod created
        # before it exists is refused
        deadline = time.monotonic() + 30
        while True:
            try:
                k8s.core.read_namespaced_service_account("default", name)
                break
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield name
    finally:
        try:
            k8s.core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
