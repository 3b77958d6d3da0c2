"""An edit of a draft task from command-line options: the calls that make it (tasks.edit, tasks.edit_hyper_params,
tasks.delete_hyper_params, tasks.set_requirements) and, after it, what changed, as a person reads it.

Pure functions over task documents and option values; `conveyor task edit` makes the calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conveyor.client.task_builder import ARGS_SECTION, SpecError, parse_args

PARAM_EXAMPLE = "--param General/epochs=10"
NOT_SHOWN = "(none)"
LONG_VALUE = 60  # longer values (a setup script, requirements) are summed up by their size


@dataclass
class EditPlan:
    """The bodies of the calls of one edit, without the task id; empty ones are not sent."""

    edit: dict[str, Any] = field(default_factory=dict)  # tasks.edit
    params: list[dict[str, str]] = field(default_factory=list)  # tasks.edit_hyper_params
    deleted: list[dict[str, str]] = field(default_factory=list)  # tasks.delete_hyper_params
    requirements: dict[str, Any] | None = None  # tasks.set_requirements
    notes: list[str] = field(default_factory=list)  # what the user should know (a commit dropped, …)

    def empty(self) -> bool:
        return not (self.edit or self.params or self.deleted or self.requirements is not None)


def parse_params(items: Iterable[str]) -> list[dict[str, str]]:
    """`["General/epochs=10"]` → hyper-parameter items; a name without a section goes to General, as in the SDK."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        section, slash, name = key.strip().rpartition("/")
        if not sep or not name.strip() or (slash and not section.strip()):
            raise SpecError(f"--param {item!r} is not Section/name=value — write e.g. {PARAM_EXAMPLE}")
        parsed.append({"section": section.strip() or "General", "name": name.strip(), "value": value})
    return parsed


def parse_deletions(items: Iterable[str]) -> list[dict[str, str]]:
    """`["Args/lr", "Extra"]` → what tasks.delete_hyper_params takes: a parameter, or (no /name) a whole section."""
    parsed = []
    for item in items:
        section, slash, name = item.strip().partition("/")
        if not section.strip() or (slash and not name.strip()):
            raise SpecError(f"--delete-param {item!r} is not Section/name (or Section, for the whole section) — "
                            "write e.g. --delete-param Args/lr")
        parsed.append({"section": section.strip(), **({"name": name.strip()} if name.strip() else {})})
    return parsed


def requirements_body(current: dict[str, Any] | None, pip_text: str) -> dict[str, Any]:
    """The new `script.requirements`: the user's list becomes the one the agent installs (`pip`); a list frozen by a
    run (`org_pip` holds the original then) is dropped with it, conda's keys stay."""
    kept = {k: v for k, v in (current or {}).items() if k not in ("pip", "org_pip")}
    return {**kept, "pip": pip_text}


def plan(task: dict[str, Any], *, name: str | None = None, comment: str | None = None,
         args: Iterable[str] = (), params: Iterable[str] = (), delete_params: Iterable[str] = (),
         pip_text: str | None = None, script: dict[str, str] | None = None,
         container: dict[str, str] | None = None) -> EditPlan:
    """The calls that change `task` as the options say. `script` holds the script fields given (repository, branch,
    version_num, entry_point, working_dir), `container` the container fields given (image, arguments,
    setup_shell_script)."""
    result = EditPlan()
    if name is not None:
        if not name.strip():
            raise SpecError("--name must not be empty — name the task, e.g. --name mnist-small")
        result.edit["name"] = name.strip()
    if comment is not None:
        result.edit["comment"] = comment
    result.params = [{"section": ARGS_SECTION, "name": k, "value": v} for k, v in parse_args(args).items()]
    result.params += parse_params(params)
    result.params = [_with_recorded(task, p) for p in result.params]
    result.deleted = parse_deletions(delete_params)
    clash = {(p["section"], p["name"]) for p in result.params} & \
            {(d["section"], d.get("name")) for d in result.deleted}
    if clash:
        section, param = sorted(clash)[0]
        raise SpecError(f"{section}/{param} is both set and deleted — give one of --param/--args and --delete-param")
    current_script = task.get("script") or {}
    if pip_text is not None:
        result.requirements = requirements_body(current_script.get("requirements"), pip_text)
    if script:
        result.edit["script"] = _script_change(current_script, dict(script), result.notes)
    if container:
        result.edit["container"] = {**(task.get("container") or {}), **container}
    return result


def _with_recorded(task: dict[str, Any], param: dict[str, str]) -> dict[str, str]:
    """A parameter to set, with the type and description recorded for it: tasks.edit_hyper_params replaces a
    parameter whole, and the type is what the SDK casts the value by (get_parameters(cast=True))."""
    recorded = ((task.get("hyperparams") or {}).get(param["section"]) or {}).get(param["name"])
    if not isinstance(recorded, dict):
        return param
    kept = {key: recorded[key] for key in ("type", "description") if isinstance(recorded.get(key), str)}
    return {**param, **kept}


def _script_change(current: dict[str, Any], change: dict[str, str], notes: list[str]) -> dict[str, str]:
    """A new repository or branch leaves the recorded commit behind (the agent would check it out), unless --commit
    names one; a new repository drops the uncommitted changes too (they were made against the old one)."""
    repo_changed = "repository" in change and change["repository"] != current.get("repository")
    branch_changed = "branch" in change and change["branch"] != current.get("branch")
    if (repo_changed or branch_changed) and "version_num" not in change and current.get("version_num"):
        change["version_num"] = ""
        notes.append(f"the recorded commit {current['version_num'][:12]} is dropped: the agent runs the head of "
                     f"{'the new repository' if repo_changed else 'branch ' + change['branch']} (--commit pins one)")
    if repo_changed and current.get("diff"):
        change["diff"] = ""
        notes.append("the uncommitted changes recorded with the old repository are dropped")
    return change


# --- what changed -------------------------------------------------------------------------------------------------
def _requirement_lines(requirements: Any) -> str:
    pip = (requirements or {}).get("pip") if isinstance(requirements, dict) else None
    text = pip if isinstance(pip, str) else "\n".join(pip or [])
    return ", ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def facts(task: dict[str, Any]) -> dict[str, str]:
    """What `task edit` can change, flattened to labelled text: the before and after of an edit are compared."""
    script = task.get("script") or {}
    container = task.get("container") or {}
    flat = {
        "name": task.get("name"), "comment": task.get("comment"),
        "repository": script.get("repository"), "branch": script.get("branch"), "commit": script.get("version_num"),
        "entry point": script.get("entry_point"), "working dir": script.get("working_dir"),
        "uncommitted changes": f"{len(script['diff'].splitlines())} line(s)" if script.get("diff") else "",
        "requirements": _requirement_lines(script.get("requirements")),
        "container image": container.get("image"), "container arguments": container.get("arguments"),
        "container setup script": container.get("setup_shell_script"),
    }
    for section, entries in (task.get("hyperparams") or {}).items():
        for param, entry in (entries or {}).items():
            flat[f"{section}/{param}"] = str((entry or {}).get("value", ""))
    return {label: str(value) for label, value in flat.items() if value not in (None, "")}


def _shown(value: str | None) -> str:
    if value is None:
        return NOT_SHOWN
    line = value.rstrip("\n")
    if len(line) > LONG_VALUE or "\n" in line:
        return f"{len(value.splitlines())} line(s), {len(value)} characters"
    return line


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`label: old → new` for each changed fact, in a stable order; deleted parameters as `label: old → (deleted)`."""
    old, new = facts(before), facts(after)
    lines = []
    for label in [*old, *(k for k in new if k not in old)]:
        if old.get(label) == new.get(label):
            continue
        gone = "/" in label and label not in new
        lines.append(f"{label}: {_shown(old.get(label))} → {'(deleted)' if gone else _shown(new.get(label))}")
    return lines
