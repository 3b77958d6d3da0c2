"""The task status machine of the reference server (clearml-agent.md 2.8); `force` skips the check."""

from __future__ import annotations

from enum import Enum


class TaskStatus(str, Enum):
    created = "created"
    queued = "queued"
    in_progress = "in_progress"
    stopped = "stopped"
    failed = "failed"
    completed = "completed"
    closed = "closed"
    published = "published"
    publishing = "publishing"
    unknown = "unknown"


S = TaskStatus
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.created: frozenset({S.queued, S.in_progress}),
    S.queued: frozenset({S.created, S.in_progress, S.stopped}),
    S.in_progress: frozenset({S.stopped, S.failed, S.created, S.completed}),
    S.stopped: frozenset({S.closed, S.created, S.failed, S.queued, S.in_progress, S.published, S.publishing,
                          S.completed}),
    S.failed: frozenset({S.created, S.stopped, S.published, S.queued}),
    S.completed: frozenset({S.published, S.in_progress, S.created}),
    S.closed: frozenset({S.created, S.published, S.publishing}),
    S.publishing: frozenset({S.published, S.created}),
    S.published: frozenset(),
    S.unknown: frozenset(S),
}

FINAL = frozenset({S.stopped, S.failed, S.completed, S.closed, S.published})
FINAL_VALUES = frozenset(s.value for s in FINAL)

# `status_message` of an in_progress task whose abort was asked (`tasks.stop` without force): the agent, or the SDK's
# abort callback, stops it and marks it stopped. The UI shows such a task as "Stopping".
STOPPING = "stopping"
# `status_message` prefix of a status set by an agent, as ClearML's agents write it ("Changed by clearml-agent h:0").
CHANGED_BY = "Changed by "


def changed_by(who: str) -> str:
    """The status message an agent leaves: `changed_by("conveyor host:0")` == "Changed by conveyor host:0"."""
    return f"{CHANGED_BY}{who}"


def can_transition(current: str, new: str) -> bool:
    """Same-status changes are allowed; unknown statuses are treated as `unknown` (anything goes)."""
    if current == new:
        return True
    try:
        cur = TaskStatus(current)
        nxt = TaskStatus(new)
    except ValueError:
        return False
    return nxt in TRANSITIONS[cur]
