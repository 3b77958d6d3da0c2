"""What the daemon reads before each pull to apply its QueuePolicy: its queues' tags and its runtime properties.

ClearML's open-source server has no runtime properties: after one refusal the watch stops asking. Before each
long-poll the watch re-reads both; the server ends a long-poll early when either changes, so a change takes
effect at once, and the wait never runs past the next schedule boundary or expiry.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from conveyor.agent.identity import Slot
from conveyor.agent.policy import Decision, Force, QueuePolicy
from conveyor.agent.schedule import local_now
from conveyor.client.caller import ApiCaller
from conveyor.client.errors import ApiCallError
from conveyor.errors import ConveyorError

log = logging.getLogger("conveyor.agent")

OFF_RECHECK_SEC = 1.0  # while forced off or idle, how often a daemon looks again (two small calls)


class PolicyWatch:
    def __init__(self, client: ApiCaller):
        self.client = client
        self.properties_supported = True

    def refresh(self, policy: QueuePolicy, worker: str) -> None:
        try:
            queues = self.client.call("queues.get_all", {"id": policy.queue_ids, "only_fields": ["id", "tags"]})
            policy.update_tags({q["id"]: q.get("tags") or [] for q in queues["queues"]})
        except ConveyorError as exc:
            log.debug("queues.get_all (tags): %s", exc)
        if not self.properties_supported or not worker:
            return
        try:
            props = self.client.call("workers.get_runtime_properties", {"worker": worker})
        except ApiCallError as exc:
            if exc.code in (400, 404):  # a server without runtime properties: only the queue tags apply
                log.info("the server has no runtime properties (%s): `force` is not read", exc)
                self.properties_supported = False
            else:
                log.debug("workers.get_runtime_properties: %s", exc)
            return
        except ConveyorError as exc:
            log.debug("workers.get_runtime_properties: %s", exc)
            return
        policy.force = Force.from_properties(props.get("runtime_properties") or [], local_now())

    def decide(self, policy: QueuePolicy, worker: str) -> Decision:
        """Re-read the tags and the runtime properties, then apply the policy now."""
        self.refresh(policy, worker)
        return policy.decide(local_now())

    @staticmethod
    def seconds_until(decision: Decision) -> float | None:
        if decision.recheck_at is None:
            return None
        return max(0.5, (decision.recheck_at - local_now()).total_seconds())

    def recheck_in(self, decision: Decision, poll_interval: float) -> float:
        """How long a daemon forced off or idle by schedule waits before it looks again: at most a second in either
        mode, so that a tag or property change takes effect within 2 s (the reference looks once a poll, 5 s)."""
        wait = min(OFF_RECHECK_SEC, poll_interval)
        until = self.seconds_until(decision)
        return min(wait, until) if until is not None else wait

    def wait_cap(self, decision: Decision) -> float | None:
        """A long-poll ends by the next schedule boundary or expiry, when the decision may change by itself."""
        return self.seconds_until(decision)


def publish(slot: Slot | None, fields: dict[str, Any]) -> None:
    """Add the daemon's live state to its slot's description, for `conveyor daemon --status`."""
    if slot is None:
        return
    try:
        info = json.loads(slot.path.read_text() or "{}")
    except (OSError, ValueError) as exc:
        log.debug("slot %s: %s", slot.path, exc)
        return
    slot.describe({**info, **fields})
