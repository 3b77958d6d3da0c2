"""API errors with ClearML's result codes and subcodes (HTTP status = result_code)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the server answers with; `code` is also the HTTP status."""

    def __init__(self, code: int, subcode: int, msg: str, data: dict[str, Any] | None = None):
        super().__init__(msg)
        self.code = code
        self.subcode = subcode
        self.msg = msg
        self.data = data or {}

    def __repr__(self) -> str:
        return f"ApiError({self.code}/{self.subcode}: {self.msg})"


# Subcodes follow apiserver/apierrors/errors.conf of the reference server where clients depend on them.
def bad_request(msg: str, subcode: int = 0) -> ApiError:
    return ApiError(400, subcode, msg)


def validation_error(msg: str) -> ApiError:
    return ApiError(400, 12, msg)


def missing_field(name: str) -> ApiError:
    return ApiError(400, 12, f"Validation error: missing required field '{name}'")


def invalid_task_id(task_id: Any) -> ApiError:
    return ApiError(400, 101, f"Invalid task id: id={task_id}")


def invalid_task_status(msg: str) -> ApiError:
    return ApiError(400, 110, f"Invalid task status: {msg}")


def invalid_project_id(project_id: Any) -> ApiError:
    return ApiError(400, 401, f"Invalid project id: id={project_id}")


def project_exists(name: str) -> ApiError:
    return ApiError(400, 402, f"Project with the same name already exists: name={name}")


def invalid_queue_id(queue_id: Any) -> ApiError:
    return ApiError(400, 701, f"Invalid queue id: id={queue_id}")


def queue_not_empty(queue_id: str) -> ApiError:
    return ApiError(400, 702, f"Queue is not empty: id={queue_id} (use force=true to delete it anyway)")


def queue_exists(name: str) -> ApiError:
    return ApiError(400, 704, f"Queue with this name already exists: name={name}")


def no_default_queue() -> ApiError:
    return ApiError(400, 705, "No queue is tagged as default: create one with system_tags [\"default\"]")


def invalid_worker_id(worker: Any) -> ApiError:
    return ApiError(400, 1001, f"Invalid worker id: worker={worker}")


def unauthorized(msg: str, subcode: int = 20) -> ApiError:
    return ApiError(401, subcode, msg)


def forbidden(msg: str) -> ApiError:
    return ApiError(403, 0, msg)


def endpoint_not_found(name: str, version: str) -> ApiError:
    return ApiError(404, 0, f"Unable to find endpoint for name {name} and version {version}")
