"""The pure parts of editing a task: what `conveyor task edit` plans from its options and prints afterwards, and the
shapes the server accepts in an edit."""

from __future__ import annotations

import pytest

from conveyor.client.task_builder import SpecError
from conveyor.client.task_edit import changes, parse_deletions, parse_params, plan, requirements_body
from conveyor.protocol.errors import ApiError
from conveyor.server.model import task_edits

TASK = {"id": "t1", "name": "mnist", "status": "created",
        "script": {"repository": "https://git.example.test/a.git", "branch": "main", "version_num": "c0ffee" * 6,
                   "entry_point": "train.py", "working_dir": ".", "diff": "+x\n",
                   "requirements": {"pip": "frozen==1\n", "org_pip": "numpy\n", "conda": "x"}},
        "container": {"image": "python:3.11", "arguments": "", "setup_shell_script": ""},
        "hyperparams": {"Args": {"lr": {"section": "Args", "name": "lr", "value": "0.1"}}}}


def test_params_and_deletions_parse_as_section_and_name() -> None:
    assert parse_params(["General/epochs=10", "lr=a=b", "a/b/c=1"]) == [
        {"section": "General", "name": "epochs", "value": "10"}, {"section": "General", "name": "lr", "value": "a=b"},
        {"section": "a/b", "name": "c", "value": "1"}]
    assert parse_deletions(["Args/lr", "Extra"]) == [{"section": "Args", "name": "lr"}, {"section": "Extra"}]
    for bad in ("epochs", "General/=1", "/x=1"):
        with pytest.raises(SpecError, match="is not Section/name=value"):
            parse_params([bad])
    with pytest.raises(SpecError, match="is not Section/name"):
        parse_deletions(["/lr"])


def test_a_new_package_list_replaces_the_frozen_one_and_its_original() -> None:
    assert requirements_body(TASK["script"]["requirements"], "idna\n") == {"conda": "x", "pip": "idna\n"}
    assert requirements_body(None, "") == {"pip": ""}


def test_a_new_branch_or_repository_leaves_the_recorded_commit_behind() -> None:
    edit = plan(TASK, script={"branch": "dev"})
    assert edit.edit["script"] == {"branch": "dev", "version_num": ""} and "dropped" in edit.notes[0]
    edit = plan(TASK, script={"branch": "dev", "version_num": "abc"})
    assert edit.edit["script"] == {"branch": "dev", "version_num": "abc"} and not edit.notes
    edit = plan(TASK, script={"repository": "https://git.example.test/b.git"})
    assert edit.edit["script"]["diff"] == "" and edit.edit["script"]["version_num"] == ""
    edit = plan(TASK, container={"arguments": "--ipc=host"})
    assert edit.edit["container"] == {"image": "python:3.11", "arguments": "--ipc=host", "setup_shell_script": ""}
    assert plan(TASK).empty()
    with pytest.raises(SpecError, match="both set and deleted"):
        plan(TASK, params=["Args/lr=1"], delete_params=["Args/lr"])


def test_changes_read_old_to_new() -> None:
    after = {**TASK, "name": "mnist-2", "hyperparams": {"General": {"e": {"value": "3"}}},
             "container": {"image": "", "setup_shell_script": "line 1\nline 2\n"}}
    assert changes(TASK, after) == [
        "name: mnist → mnist-2", "container image: python:3.11 → (none)", "Args/lr: 0.1 → (deleted)",
        "container setup script: (none) → 2 line(s), 14 characters", "General/e: (none) → 3"]
    assert changes(TASK, TASK) == []


def test_server_keeps_parameters_as_text_with_their_keys() -> None:
    assert task_edits.param_entry({"name": "lr", "value": 0.5}) == {
        "section": "General", "name": "lr", "value": "0.5", "type": "", "description": ""}
    assert task_edits.param_entry({"name": "on", "value": True, "section": "Args"})["value"] == "true"
    stored = task_edits.hyperparams_field({"Args": {"lr": {"name": "other", "section": "X", "value": None}}})
    assert stored == {"Args": {"lr": {"section": "Args", "name": "lr", "value": "", "type": "", "description": ""}}}
    assert task_edits.param_keys([{"section": "Args", "name": ""}, {}]) == [("Args", None), ("General", None)]
    with pytest.raises(ApiError, match="non-empty string 'name'"):
        task_edits.param_entry({"name": " "})
    with pytest.raises(ApiError, match="one of none, section, all"):
        task_edits.replace_mode("every")
    assert task_edits.requirements_field({"pip": ["a", "b"], "conda": None}) == {"pip": ["a", "b"], "conda": None}
    assert task_edits.container_field({"image": None}) == {"image": ""}
