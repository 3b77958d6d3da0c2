"""Why a run failed, in two classes: `infrastructure` (the machine, the network, the cluster: another try may
succeed) and `task` (the user's code or inputs: another try fails the same way). Only infrastructure failures are
retried (`retries: N` on the task or its queue, server/model/retries.py). A cluster job that hit the task's own limits
(its time, its memory) and an image that does not exist are the task's; a git host that fails to serve is not.

How it travels (Conveyor additions a ClearML client never sends and ignores when it reads a task):
- `tasks.failed` takes an optional `failure_class` beside `status_reason`;
- a task document carries `failure_class` (that of its last failure; "" once it leaves `failed`) and `attempts`
  (one entry per failed run: attempt, worker, reason, failure_class, time, retried).
"""

from __future__ import annotations

import re
from enum import Enum


class FailureClass(str, Enum):
    infrastructure = "infrastructure"
    task = "task"


FIELD = "failure_class"  # of `tasks.failed` and of a task document
ATTEMPTS_FIELD = "attempts"  # of a task document: its failed runs, oldest first
ATTEMPTS_LIMIT = 100  # entries kept (the oldest go first)
RETRIES_USED_FIELD = "retries_used"  # of a task document: automatic re-enqueues since the user's last enqueue

# Where `retries: N` is read: the task's user property (Configuration → User properties in the UI, `properties`
# section of its hyper-parameters), else its queue's metadata key.
RETRIES_SECTION = "properties"
RETRIES_NAME = "retries"
QUEUE_RETRIES_KEY = "retries"

# Words of git, uv and pip when the network, not the task, is at fault (a host unreachable, a name not resolved).
_UNREACHABLE = ("could not resolve", "connection refused", "connection timed out", "network is unreachable",
                "failed to connect", "no route to host", "operation timed out", "timed out", "server is not reachable",
                "temporary failure in name resolution", "name or service not known", "dns error",
                "tcp connect error", "error sending request", "failed to establish a new connection",
                "max retries exceeded", "connection reset", "could not connect", "failed to fetch",
                # a git host or package index that answered, but failed to serve (a proxy, an overloaded server)
                "returned error: 502", "returned error: 503", "returned error: 504", "rpc failed", "early eof",
                "remote end hung up unexpectedly", "502 bad gateway", "503 service unavailable", "504 gateway timeout")

# Words of a container engine (or of Kubernetes' image pull) when the image does not exist or may not be pulled: the
# task names an image no other try will find.
_IMAGE_MISSING = ("manifest unknown", "repository does not exist", "pull access denied", "no such image",
                  "requested access to the resource is denied", "name unknown", "invalid reference format")

# How a Slurm job or a Kubernetes pod ended when it hit the limits the task's own job asked for (its time limit, its
# memory, its deadline): another try hits them again. The cluster's own failures (NODE_FAIL, PREEMPTED, BOOT_FAIL,
# Evicted, a lost node) stay the infrastructure's.
_OWN_LIMITS = re.compile(r"^slurm: (TIMEOUT|OUT_OF_MEMORY|DEADLINE)\b|^k8s: .*\b(OOMKilled|DeadlineExceeded)\b")


def retries_count(raw: object) -> int | None:
    """`retries` as a user property or queue metadata entry holds it ({"value": "2"}, ClearML's shape, or a bare 2);
    None when unset. Raises ValueError when it is not a whole number ≥ 0."""
    value = raw.get("value") if isinstance(raw, dict) else raw
    if value is None or value == "":
        return None
    try:
        count = int(str(value).strip())
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{value!r} is not a whole number of retries (0 or more)")
    return count


def parse(value: object) -> FailureClass | None:
    """The class a caller named (None for none or an unknown word: such a failure counts as the task's)."""
    if isinstance(value, FailureClass):
        return value
    try:
        return FailureClass(str(value).strip().lower()) if value else None
    except ValueError:
        return None


def unreachable(message: str) -> bool:
    """True when a clone's or an install's error says a host could not be reached."""
    text = message.lower()
    return any(word in text for word in _UNREACHABLE)


def of_fetch(message: str) -> FailureClass:
    """A clone or an install that failed: the network's fault when it says a host was unreachable, else the task's
    (a commit, branch or requirement that does not exist)."""
    return FailureClass.infrastructure if unreachable(message) else FailureClass.task


def shown(reason: str, failure_class: object) -> str:
    """A status reason as people read it: "worker lost [infrastructure]"."""
    cls = parse(failure_class)
    if cls is None:
        return reason
    return f"{reason} [{cls.value}]" if reason else f"[{cls.value}]"


def of_image(message: str) -> FailureClass:
    """A container that could not start (or a pod whose image could not be pulled): the task's fault when its image
    does not exist or may not be pulled, else the infrastructure's (the engine, the registry, the machine)."""
    text = message.lower()
    return FailureClass.task if any(word in text for word in _IMAGE_MISSING) else FailureClass.infrastructure


def of_job_end(reason: str) -> FailureClass:
    """A cluster job the cluster ended (`slurm: TIMEOUT after 00:05:00`, `k8s: pod p OOMKilled (exit code 137)`): the
    task's fault when it hit its own limits, else the infrastructure's."""
    return FailureClass.task if _OWN_LIMITS.search(reason) else FailureClass.infrastructure
