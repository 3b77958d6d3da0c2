"""Which queue to pull from next: strict priority (the order given) or round-robin fairness."""

from __future__ import annotations

from dataclasses import dataclass, field

from conveyor.protocol.tags import QUEUE_PAUSED


@dataclass
class QueuePolicy:
    queue_ids: list[str]
    fairness: bool = False
    paused: set[str] = field(default_factory=set)  # queues tagged QUEUE_PAUSED

    def order(self) -> list[str]:
        """Queues to try now, best first."""
        return [q for q in self.queue_ids if q not in self.paused]

    def took_from(self, queue_id: str) -> None:
        """With fairness, the queue just served goes to the back, so every queue gets its turn."""
        if self.fairness and queue_id in self.queue_ids:
            self.queue_ids.remove(queue_id)
            self.queue_ids.append(queue_id)

    def update_tags(self, tags_by_queue: dict[str, list[str]]) -> None:
        self.paused = {q for q, tags in tags_by_queue.items() if QUEUE_PAUSED in (tags or [])}
