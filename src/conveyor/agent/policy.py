"""Which queue to pull from next: strict priority (the order given) or round-robin fairness, and whether to pull at
all. The precedence is ClearML's: a queue tag (`force_workers:off` / `:on`) > the worker's runtime property `force`
(off / on, maybe with an expiry) > the working-hours schedule > active."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from conveyor.agent.schedule import Schedule, local_now
from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED
from conveyor.protocol.worker_state import WorkerState

FORCE_KEY = "force"  # the runtime property a user sets with workers.set_runtime_properties


@dataclass(frozen=True)
class Force:
    """The runtime property `force`: on or off, until `until` (local time) or for good."""

    on: bool
    until: datetime | None = None

    @classmethod
    def from_properties(cls, props: list[dict], now: datetime) -> Force | None:
        for prop in props or []:
            value = str(prop.get("value") or "").strip().lower()
            if prop.get("key") == FORCE_KEY and value in ("on", "off"):
                expiry = prop.get("expiry")
                until = now + timedelta(seconds=float(expiry)) if expiry else None
                return cls(value == "on", until)
        return None


@dataclass(frozen=True)
class Decision:
    queues: list[str]  # to pull from, best first
    state: WorkerState
    reason: str
    recheck_at: datetime | None  # when the answer changes by itself (an expiry, a schedule boundary)


def _until(at: datetime | None) -> str:
    return f" until {at:%H:%M}" if at else ""


@dataclass
class QueuePolicy:
    queue_ids: list[str]
    fairness: bool = False
    schedule: Schedule = field(default_factory=Schedule)
    tags: dict[str, list[str]] = field(default_factory=dict)
    force: Force | None = None

    @property
    def paused(self) -> set[str]:
        return {q for q in self.queue_ids if QUEUE_PAUSED in self.tags.get(q, [])}

    def decide(self, now: datetime) -> Decision:
        force = self.force if self.force and (self.force.until is None or self.force.until > now) else None
        scheduled = self.schedule.active(now)
        boundary = self.schedule.next_change(now) if self.schedule.uptime or self.schedule.downtime else None
        recheck = min((t for t in (boundary, force.until if force else None) if t), default=None)
        pulled, tagged_on = [], []
        for q in self.queue_ids:
            tags = self.tags.get(q, [])
            if QUEUE_PAUSED in tags:
                continue
            if QUEUE_FORCED_ON in tags:
                pulled.append(q)
                tagged_on.append(q)
            elif force is not None:
                if force.on:
                    pulled.append(q)
            elif scheduled:
                pulled.append(q)
        if force is not None and force.on and pulled:
            return Decision(pulled, WorkerState.forced_on, "forced on" + _until(force.until), recheck)
        if pulled and len(tagged_on) == len(pulled) and (not scheduled or force is not None):
            return Decision(pulled, WorkerState.forced_on, f"forced on by queue tag {QUEUE_FORCED_ON}", recheck)
        if pulled:
            return Decision(pulled, WorkerState.active, "", recheck)
        if self.queue_ids and len(self.paused) == len(self.queue_ids):
            return Decision([], WorkerState.forced_off, f"forced off by queue tag {QUEUE_PAUSED}", recheck)
        if force is not None and not force.on:
            return Decision([], WorkerState.forced_off, "forced off" + _until(force.until), recheck)
        return Decision([], WorkerState.idle_by_schedule, "idle by schedule" + _until(boundary), recheck)

    def order(self, now: datetime | None = None) -> list[str]:
        """Queues to try now, best first."""
        return self.decide(now or local_now()).queues

    def took_from(self, queue_id: str) -> None:
        """With fairness, the queue just served goes to the back, so every queue gets its turn."""
        if self.fairness and queue_id in self.queue_ids:
            self.queue_ids.remove(queue_id)
            self.queue_ids.append(queue_id)

    def update_tags(self, tags_by_queue: dict[str, list[str]]) -> None:
        self.tags = {q: list(tags or []) for q, tags in tags_by_queue.items()}
