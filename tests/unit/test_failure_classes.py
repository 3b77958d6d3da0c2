"""Which failures another try may cure (`infrastructure`) and which it would repeat (`task`), from the words of git,
the container engines, Slurm and Kubernetes (protocol/failure.py)."""

from __future__ import annotations

import pytest

from conveyor.protocol.failure import FailureClass, of_fetch, of_image, of_job_end

INFRA, TASK = FailureClass.infrastructure, FailureClass.task


@pytest.mark.parametrize(("reason", "expected"), [
    ("slurm: TIMEOUT after 00:05:00", TASK),
    ("slurm: OUT_OF_MEMORY after 00:01:12 (exit code 0:125)", TASK),
    ("slurm: DEADLINE after 00:10:00", TASK),
    ("k8s: pod conveyor-1a2b-x7 OOMKilled (exit code 137)", TASK),
    ("k8s: job conveyor-1a2b failed: DeadlineExceeded: Job was active longer than specified deadline", TASK),
    ("k8s: pod conveyor-1a2b-x7 DeadlineExceeded (exit code 1)", TASK),
    ("slurm: NODE_FAIL after 00:03:00", INFRA),
    ("slurm: PREEMPTED after 00:03:00", INFRA),
    ("slurm: BOOT_FAIL", INFRA),
    ("slurm: CANCELLED after 00:00:04: cancelled by an administrator", INFRA),
    ("k8s: pod conveyor-1a2b-x7 Evicted: The node was low on resource: memory", INFRA),
    ("k8s: pod conveyor-1a2b-x7 was deleted or evicted while its task ran", INFRA),
    ("slurm job 12 ended", INFRA),
])
def test_a_cluster_job_that_hit_its_own_limits_is_the_tasks_failure(reason: str, expected: FailureClass) -> None:
    assert of_job_end(reason) == expected


@pytest.mark.parametrize(("message", "expected"), [
    ("error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502", INFRA),
    ("fatal: unable to access 'https://git.example.com/a.git/': The requested URL returned error: 503", INFRA),
    ("fatal: unable to access 'https://git.example.com/a.git/': The requested URL returned error: 504", INFRA),
    ("error: RPC failed; curl 18 transfer closed with outstanding read data remaining", INFRA),
    ("fetch-pack: unexpected disconnect while reading sideband packet\nfatal: early EOF", INFRA),
    ("fatal: the remote end hung up unexpectedly", INFRA),
    ("HTTP status server error (503 Service Unavailable) for url (https://pypi.example.com/simple/torch/)", INFRA),
    ("fatal: repository 'https://git.example.com/nowhere.git/' not found", TASK),
    ("fatal: couldn't find remote ref never-pushed", TASK),
    ("error: pathspec 'deadbeef' did not match any file(s) known to git", TASK),
])
def test_a_git_host_that_fails_to_serve_is_the_infrastructures_failure(message: str, expected: FailureClass) -> None:
    assert of_fetch(message) == expected


@pytest.mark.parametrize(("message", "expected"), [
    ("container failed to start: Unable to find image 'nope:1' locally; Error response from daemon: manifest for "
     "nope:1 not found: manifest unknown: manifest unknown", TASK),
    ("container failed to start: Error response from daemon: pull access denied for nope, repository does not exist "
     "or may require 'docker login': denied: requested access to the resource is denied", TASK),
    ("container failed to start: Error: nope:1: image not known; no such image", TASK),
    ("ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nope:1\": "
     "not found: manifest unknown", TASK),
    ("container failed to start: Error response from daemon: Get \"https://registry-1.docker.io/v2/\": net/http: "
     "request canceled while waiting for connection (Client.Timeout exceeded while awaiting headers)", INFRA),
    ("container failed to start: docker: Error response from daemon: no space left on device", INFRA),
    ("container failed to start: could not select device driver \"\" with capabilities: [[gpu]]", INFRA),
])
def test_an_image_that_does_not_exist_is_the_tasks_failure(message: str, expected: FailureClass) -> None:
    assert of_image(message) == expected
