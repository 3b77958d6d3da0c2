"""API errors with ClearML's result codes and subcodes (HTTP status = result_code)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.errors import ConveyorError


class ApiError(ConveyorError):
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


def _refusal(subcode: int, template: str) -> Callable[[Any], ApiError]:
    """A factory of 400 answers that name one value: `template` holds one `{}`."""
    def refuse(value: Any) -> ApiError:
        return ApiError(400, subcode, template.format(value))
    return refuse


missing_field = _refusal(12, "Validation error: missing required field '{}'")
invalid_task_id = _refusal(101, "Invalid task id: id={}")
invalid_task_status = _refusal(110, "Invalid task status: {}")
invalid_project_id = _refusal(401, "Invalid project id: id={}")
project_exists = _refusal(402, "Project with the same name already exists: name={}")
invalid_queue_id = _refusal(701, "Invalid queue id: id={}")
queue_not_empty = _refusal(702, "Queue is not empty: id={} (use force=true to delete it anyway)")
queue_exists = _refusal(704, "Queue with this name already exists: name={}")
invalid_worker_id = _refusal(1001, "Invalid worker id: worker={}")


def no_default_queue() -> ApiError:
    return ApiError(400, 705, "No queue is tagged as default: create one with system_tags [\"default\"]")


def unauthorized(msg: str, subcode: int = 20) -> ApiError:
    return ApiError(401, subcode, msg)


def forbidden(msg: str) -> ApiError:
    return ApiError(403, 0, msg)


def endpoint_not_found(name: str, version: str) -> ApiError:
    return ApiError(404, 0, f"Unable to find endpoint for name {name} and version {version}")
