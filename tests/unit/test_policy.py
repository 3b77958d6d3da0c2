"""Which queue a daemon serves next: strict priority in the order given, round-robin with fairness, paused queues
skipped until resumed."""

from __future__ import annotations

from conveyor.agent.policy import QueuePolicy
from conveyor.protocol.tags import QUEUE_PAUSED


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
