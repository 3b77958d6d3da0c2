"""How a task's entry point and `Args` become the command line that `conveyor execute` runs (and `conveyor build`
records)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor.agent.entry_point import PYTHON, args_on_command_line, entry_argv, task_args, with_python
from conveyor.config import Config, load_config
from conveyor.errors import TaskFailure
from conveyor.protocol.tags import ARGS_ON_COMMAND_LINE


def config(tmp_path: Path, **agent: Any) -> Config:
    data = load_config(environ={"HOME": str(tmp_path)}).as_dict(masked=False)
    data["agent"].update(agent)
    return Config(data)


def args(**params: dict[str, Any]) -> dict[str, Any]:
    return {"hyperparams": {"Args": params}}


def test_args_become_name_value_pairs_in_order() -> None:
    task = args(lr={"value": "0.1"}, epochs={"value": 3}, name={"value": "my run"})
    assert task_args(task) == ["--lr", "0.1", "--epochs", "3", "--name", "my run"]


def test_a_name_with_its_own_dashes_is_kept_and_an_empty_value_leaves_the_flag_alone() -> None:
    task = args(**{"-v": {"value": ""}, "--out": {"value": "x"}, "dry": {"value": None}})
    assert task_args(task) == ["-v", "--out", "x", "--dry"]


@pytest.mark.parametrize(("value", "expected"), [("true", ["--fast"]), ("1", ["--fast"]), ("False", []), ("", [])])
def test_a_bool_arg_is_a_flag_present_only_when_true(value: str, expected: list[str]) -> None:
    assert task_args(args(fast={"value": value, "type": "bool"})) == expected


def test_a_task_without_args_adds_nothing() -> None:
    assert task_args({}) == []
    assert task_args({"hyperparams": {"General": {"x": {"value": "1"}}}}) == []


def test_args_go_on_the_command_line_only_for_tagged_tasks_unless_configured(tmp_path: Path) -> None:
    tagged = {"system_tags": [ARGS_ON_COMMAND_LINE]}
    assert args_on_command_line(tagged, config(tmp_path))
    assert not args_on_command_line({}, config(tmp_path))  # the SDK applies Args to argparse itself
    assert args_on_command_line({}, config(tmp_path, args_to_argv="always"))
    assert not args_on_command_line(tagged, config(tmp_path, args_to_argv="never"))


def script_task(entry: str, binary: str = "python3", **extra: Any) -> dict[str, Any]:
    return {"script": {"entry_point": entry, "binary": binary}, **extra}


def test_a_script_runs_unbuffered_with_the_environment_python_and_tagged_args(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    task = script_task("train.py --seed 1", system_tags=[ARGS_ON_COMMAND_LINE], **args(lr={"value": "0.1"}))
    argv = entry_argv(task, config(tmp_path), tmp_path, lambda _line: None)
    assert argv == [PYTHON, "-u", "train.py", "--seed", "1", "--lr", "0.1"]
    assert with_python(argv, Path("/venv/bin/python"))[0] == "/venv/bin/python"


def test_a_module_entry_point_needs_no_file_but_a_module_name(tmp_path: Path) -> None:
    assert entry_argv(script_task("-m pkg.main --x 1"), config(tmp_path), tmp_path, print) == \
        [PYTHON, "-u", "-m", "pkg.main", "--x", "1"]
    with pytest.raises(TaskFailure, match="'-m' names no module"):
        entry_argv(script_task("-m"), config(tmp_path), tmp_path, print)


def test_a_shell_script_runs_with_its_shell(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    assert entry_argv(script_task("run.sh a"), config(tmp_path), tmp_path, print) == ["bash", "run.sh", "a"]
    assert entry_argv(script_task("run.sh", binary="sh"), config(tmp_path), tmp_path, print) == ["sh", "run.sh"]


def test_a_missing_or_empty_entry_point_fails_the_task_with_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(TaskFailure, match="'missing.py' not found in src"):
        entry_argv({"script": {"entry_point": "missing.py", "working_dir": "src"}}, config(tmp_path), tmp_path, print)
    with pytest.raises(TaskFailure, match="no entry point"):
        entry_argv(script_task("  "), config(tmp_path), tmp_path, print)
    (tmp_path / "run.sh").unlink(missing_ok=True)
    with pytest.raises(TaskFailure, match="'run.sh' not found"):  # shell scripts too: before anything is installed
        entry_argv(script_task("run.sh"), config(tmp_path), tmp_path, print)
