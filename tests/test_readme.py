"""The README's commands work as written: tasks go to queues an agent serves, daemons name queues that exist or
create them, and the test command is the one that sets a fresh machine up."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
SERVED_BY_UP = {"default"}  # `conveyor up` serves the queue `default` (cli/up.py)


def _commands() -> list[list[str]]:
    """Every `conveyor …` command of the README's bash blocks, split at `;` and `&&`, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            for part in re.split(r"\s(?:;|&&)\s", re.split(r"\s#\s", line)[0]):
                words = shlex.split(part.replace("<", "").replace(">", "").replace("|", " "))
                if words[:1] == ["conveyor"]:
                    found.append(words)
    return found


def _queues(words: list[str]) -> list[str]:
    if "--queue" not in words:
        return []
    rest = words[words.index("--queue") + 1:]
    return [w for w in rest[:next((i for i, w in enumerate(rest) if w.startswith("-")), len(rest))]]


def test_the_guard_sees_the_readme_commands() -> None:
    names = {tuple(w[:2]) for w in _commands()}
    assert {("conveyor", "up"), ("conveyor", "daemon"), ("conveyor", "task")} <= names


def test_daemons_serve_queues_that_exist() -> None:
    created = set(SERVED_BY_UP)
    for words in _commands():
        if words[1:3] == ["queue", "create"]:
            created.update(words[3:])
        if words[1] == "daemon" and "--stop" not in words and "--status" not in words:
            missing = [q for q in _queues(words) if q not in created]
            assert not missing or "--create-queue" in words, \
                f"`{' '.join(words)}`: queue {missing} is never created; add --create-queue"
            created.update(_queues(words))


def test_tasks_go_to_served_queues() -> None:
    served = set(SERVED_BY_UP) | {q for w in _commands() if w[1] == "daemon" for q in _queues(w)}
    tasks = [w for w in _commands() if w[1:3] == ["task", "create"] and "--queue" in w]
    assert tasks, "the quick start shows no `conveyor task create --queue`"
    for words in tasks:
        assert set(_queues(words)) <= served, f"`{' '.join(words)}` waits for ever: no agent serves its queue"


def test_the_test_command_sets_a_fresh_machine_up() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^bash \.ci/run\b", quick_start, re.M), "the quick start's test command must be `bash .ci/run`"
    assert "python -m pytest tests/" in quick_start, "say how to run the fast tests alone"
