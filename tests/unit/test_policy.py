"""Which queue a daemon serves next: strict priority in the order given, round-robin with fairness, paused queues
skipped until resumed."""

from __future__ import annotations

from datetime import datetime

from conveyor.agent.policy import Force, QueuePolicy
from conveyor.agent.schedule import Schedule
from conveyor.protocol.tags import QUEUE_FORCED_ON, QUEUE_PAUSED
from conveyor.protocol.worker_state import WorkerState


def test_strict_priority_keeps_the_order_given_whatever_was_served() -> None:
    policy = QueuePolicy(["high", "low"])
    policy.took_from("high")
    policy.took_from("high")
    assert policy.order() == ["high", "low"]


def test_fairness_sends_the_queue_just_served_to_the_back() -> None:
    policy = QueuePolicy(["a", "b", "c"], fairness=True)
    policy.took_from("a")
    assert policy.order() == ["b", "c", "a"]
    policy.took_from("c")
    assert policy.order() == ["b", "a", "c"]


def test_fairness_ignores_a_queue_it_does_not_serve() -> None:
    policy = QueuePolicy(["a", "b"], fairness=True)
    policy.took_from("elsewhere")
    assert policy.order() == ["a", "b"]


def test_a_paused_queue_is_skipped_until_its_tag_goes() -> None:
    policy = QueuePolicy(["a", "b"])
    policy.update_tags({"a": [QUEUE_PAUSED, "other"], "b": ["other"]})
    assert policy.order() == ["b"]
    policy.update_tags({"a": [], "b": None})  # a server may send null tags
    assert policy.order() == ["a", "b"]


def test_every_queue_paused_leaves_nothing_to_pull() -> None:
    policy = QueuePolicy(["a", "b"], fairness=True)
    policy.update_tags({"a": [QUEUE_PAUSED], "b": [QUEUE_PAUSED]})
    assert policy.order() == []


# --- whether to pull at all: queue tag > runtime property `force` > schedule > active -------------------------------
SUNDAY_NIGHT = datetime(2026, 11, 29, 21, 0)  # a Sunday
MONDAY_NOON = datetime(2026, 11, 30, 12, 0)
EVENINGS = Schedule.parse("20-23 SUN", None)


def test_with_nothing_set_the_worker_is_active() -> None:
    decision = QueuePolicy(["a", "b"]).decide(MONDAY_NOON)
    assert (decision.queues, decision.state) == (["a", "b"], WorkerState.active)


def test_outside_its_uptime_the_worker_idles_until_the_next_span() -> None:
    decision = QueuePolicy(["a"], schedule=EVENINGS).decide(datetime(2026, 11, 29, 14, 5))
    assert (decision.queues, decision.state) == ([], WorkerState.idle_by_schedule)
    assert decision.reason == "idle by schedule until 20:00"
    assert decision.recheck_at == datetime(2026, 11, 29, 20, 0)
    assert QueuePolicy(["a"], schedule=EVENINGS).decide(SUNDAY_NIGHT).queues == ["a"]


def test_a_runtime_property_off_beats_the_schedule_until_it_expires() -> None:
    policy = QueuePolicy(["a"], schedule=EVENINGS, force=Force(False, until=datetime(2026, 11, 29, 21, 30)))
    decision = policy.decide(SUNDAY_NIGHT)
    assert (decision.queues, decision.state, decision.reason) == ([], WorkerState.forced_off, "forced off until 21:30")
    assert decision.recheck_at == datetime(2026, 11, 29, 21, 30)
    assert policy.decide(datetime(2026, 11, 29, 21, 31)).queues == ["a"]  # expired: the schedule again


def test_a_runtime_property_on_beats_the_schedule() -> None:
    decision = QueuePolicy(["a"], schedule=EVENINGS, force=Force(True)).decide(MONDAY_NOON)
    assert (decision.queues, decision.state) == (["a"], WorkerState.forced_on)


def test_a_queue_tag_off_beats_a_runtime_property_on() -> None:
    policy = QueuePolicy(["a", "b"], force=Force(True))
    policy.update_tags({"a": [QUEUE_PAUSED]})
    assert policy.decide(MONDAY_NOON).queues == ["b"]
    policy.update_tags({"a": [QUEUE_PAUSED], "b": [QUEUE_PAUSED]})
    decision = policy.decide(MONDAY_NOON)
    assert (decision.queues, decision.state) == ([], WorkerState.forced_off)
    assert decision.reason == f"forced off by queue tag {QUEUE_PAUSED}"


def test_a_queue_tag_on_beats_a_runtime_property_off_and_the_schedule() -> None:
    policy = QueuePolicy(["a", "b"], schedule=EVENINGS, force=Force(False))
    policy.update_tags({"b": [QUEUE_FORCED_ON]})
    decision = policy.decide(MONDAY_NOON)
    assert (decision.queues, decision.state) == (["b"], WorkerState.forced_on)
    assert decision.reason == f"forced on by queue tag {QUEUE_FORCED_ON}"


def test_the_runtime_property_is_read_as_clearml_writes_it() -> None:
    props = [{"key": "other", "value": "x"}, {"key": "force", "value": "Off", "expiry": 90}]
    assert Force.from_properties(props, MONDAY_NOON) == Force(False, datetime(2026, 11, 30, 12, 1, 30))
    assert Force.from_properties([{"key": "force", "value": "maybe"}], MONDAY_NOON) is None
