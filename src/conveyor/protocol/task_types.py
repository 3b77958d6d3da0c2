"""Task types, as ClearML's `tasks.create` accepts them (`Task.TaskTypes` in the SDK)."""

from __future__ import annotations

from enum import Enum


class TaskType(str, Enum):
    training = "training"
    testing = "testing"
    inference = "inference"
    data_processing = "data_processing"
    application = "application"
    monitor = "monitor"
    controller = "controller"
    optimizer = "optimizer"
    service = "service"
    qc = "qc"
    custom = "custom"


TASK_TYPES: tuple[str, ...] = tuple(t.value for t in TaskType)
DEFAULT_TASK_TYPE = TaskType.training
