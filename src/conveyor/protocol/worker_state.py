"""What a worker is doing besides running tasks, as a daemon reports it (a Conveyor addition to
`workers.status_report`: the fields `state` and `state_reason`, which ClearML's servers ignore) and as
`worker list` and the web UI show it."""

from __future__ import annotations

from enum import Enum


class WorkerState(str, Enum):
    active = "active"  # pulls when it has room
    idle_by_schedule = "idle_by_schedule"  # outside its uptime, or inside its downtime
    forced_on = "forced_on"  # a queue tag or runtime property makes it pull whatever its schedule says
    forced_off = "forced_off"  # a queue tag or runtime property stops it pulling
    waiting_for_gpu = "waiting_for_gpu"  # the next task's GPUs are busy, or used by processes not its own


# Body fields of `workers.status_report` (and fields of `workers.get_all`'s workers) that carry it.
STATE_FIELD = "state"
STATE_REASON_FIELD = "state_reason"  # e.g. "forced off by queue tag force_workers:off", "waiting: GPU 1 has 3.2 GiB
#                                      used by pid 1234"
