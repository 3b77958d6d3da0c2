"""A task as `clearml-task` records it: the `tasks.create` body built from command-line options, and the look-ups
by name (project, queue, task) that building and enqueuing need.

The body builders are pure functions; the look-ups take an ApiClient. Errors a user can cause are SpecError, whose
message says what was wrong and what to do.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import UserError
from conveyor.protocol.tags import ARGS_ON_COMMAND_LINE
from conveyor.protocol.task_types import DEFAULT_TASK_TYPE

if TYPE_CHECKING:
    from conveyor.client.api import ApiClient

DEFAULT_BINARY = "python3"  # the interpreter the agent runs the entry point with when the user names none
ARGS_SECTION = "Args"  # the hyper-parameter section clearml-task writes --args to (argparse's section in the SDK)
_ARG_NAME = re.compile(r"^[^\s=]+$")


class SpecError(UserError):
    """An option, or a name it refers to, that does not work; the message says what to do."""


@dataclass(frozen=True)
class ScriptSource:
    """Where the code comes from: a repository URL (or "" for a standalone script held whole in `diff`)."""

    repository: str
    branch: str = ""
    commit: str = ""
    diff: str = ""


# --- options → body ---------------------------------------------------------------------------------------------
def task_name(name: str) -> str:
    if not name or not name.strip():
        raise SpecError("--name must not be empty — name the task, e.g. --name mnist")
    return name.strip()


def parse_args(items: Iterable[str]) -> dict[str, str]:
    """`["lr=0.1", "b=2"]` → `{"lr": "0.1", "b": "2"}`; the value may hold `=`, the last of a repeated name wins."""
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _ARG_NAME.match(name):
            raise SpecError(f"--args {item!r} is not name=value — write e.g. --args lr=0.1 batch_size=32")
        parsed[name] = value
    return parsed


def hyperparams(args: dict[str, str]) -> dict[str, Any]:
    """The `hyperparams` field: every argument in the `Args` section, values as text (as the SDK stores them)."""
    if not args:
        return {}
    return {ARGS_SECTION: {name: {"section": ARGS_SECTION, "name": name, "value": value, "type": "",
                                  "description": ""} for name, value in args.items()}}


def read_option_file(path: str, option: str) -> str:
    """The text of a file an option names (--requirements, --docker-bash-setup-script)."""
    file = Path(path).expanduser()
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{option} {path}: no such file — give the path of an existing file") from None
    except IsADirectoryError:
        raise SpecError(f"{option} {path} is a directory — give the path of a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{option} {path} cannot be read ({exc}) — give a readable UTF-8 text file") from None


def requirements(text: str | None = None, packages: list[str] | None = None) -> dict[str, str] | None:
    """`script.requirements` from a requirements file's text or a package list; None when neither is given (the
    agent then uses the repository's requirements.txt)."""
    if text is not None and packages:
        raise SpecError("--requirements and --packages exclude each other — give one of them")
    if text is not None:
        return {"pip": text}
    if packages:
        return {"pip": "".join(f"{p.strip()}\n" for p in packages if p.strip())}
    return None


def normalize_dir(working_dir: str | None) -> str:
    """A repository-relative directory in the form tasks hold it: posix, no leading `./`, "." for the root."""
    text = (working_dir or ".").replace("\\", "/")
    if text.startswith("/"):
        raise SpecError(f"--working-dir {working_dir} must be relative to the repository root, e.g. src")
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        raise SpecError(f"--working-dir {working_dir} leads out of the repository — give a folder inside it")
    return norm


def entry_point(script: str, working_dir: str = ".") -> str:
    """The entry point as the agent runs it from `working_dir`: `script` (relative to the repository root)
    made relative to that directory, as clearml-task stores it. `-m module` stays as it is."""
    if script.startswith("-m "):
        return script
    path = posixpath.normpath(script.replace("\\", "/"))
    if working_dir in ("", "."):
        return path
    return posixpath.relpath(path, working_dir)


def script_section(source: ScriptSource, entry: str, *, working_dir: str = ".", binary: str | None = None,
                   reqs: dict[str, str] | None = None) -> dict[str, Any]:
    script: dict[str, Any] = {
        "repository": source.repository, "branch": source.branch, "version_num": source.commit, "tag": "",
        "entry_point": entry, "working_dir": working_dir or ".", "diff": source.diff,
        "binary": binary or DEFAULT_BINARY,
    }
    if reqs is not None:
        script["requirements"] = reqs
    return script


def container_section(image: str | None, arguments: str | None = None,
                      setup_script: str | None = None) -> dict[str, str]:
    """`container`, used by agents in docker mode; --docker-args or a setup script without an image make no sense."""
    if not image and (arguments or setup_script):
        raise SpecError("--docker-args and --docker-bash-setup-script need --docker IMAGE")
    if not image:
        return {}
    return {"image": image, "arguments": arguments or "", "setup_shell_script": setup_script or ""}


def create_body(*, name: str, script: dict[str, Any], params: dict[str, Any] | None = None,
                container: dict[str, str] | None = None, project: str | None = None,
                task_type: str | None = None, comment: str = "") -> dict[str, Any]:
    """The `tasks.create` body."""
    body: dict[str, Any] = {"name": task_name(name), "type": task_type or DEFAULT_TASK_TYPE.value, "comment": comment,
                            "script": script, "hyperparams": params or {}, "container": container or {}}
    if (params or {}).get(ARGS_SECTION):
        # --args are command-line arguments of a script that does not read them through the clearml SDK
        body["system_tags"] = [ARGS_ON_COMMAND_LINE]
    if project:
        body["project"] = project
    return body


# --- look-ups ---------------------------------------------------------------------------------------------------
def exact_name_regex(name: str) -> str:
    """The anchored, escaped regex that `get_all` calls match names with (as the SDK sends it)."""
    return f"^{re.escape(name)}$"


def _pick_by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The server matches names case-insensitively: prefer the exact spelling, else a single match."""
    exact = [i for i in items if i.get("name") == name]
    if exact:
        return exact[0]
    folded = [i for i in items if str(i.get("name", "")).lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def find_project(client: ApiClient, name: str) -> dict[str, Any] | None:
    answer = client.call("projects.get_all", {"name": exact_name_regex(name), "only_fields": ["id", "name"],
                                              "search_hidden": True})
    return _pick_by_name(answer.get("projects") or [], name)


def project_id(client: ApiClient, name: str, *, create: bool = False) -> str:
    """The id of the project called `name`; with `create`, made when missing (as clearml-task does)."""
    found = find_project(client, name)
    if found:
        return found["id"]
    if not create:
        raise SpecError(f"No project named {name!r} — check the name (`conveyor task list` shows project names)")
    return client.call("projects.create", {"name": name, "description": ""})["id"]


def _names_by_id(client: ApiClient, service: str, ids: Iterable[str | None]) -> dict[str, str]:
    """Names of the `service` ("projects") objects with these ids, in one call; an id the server lacks stays out."""
    wanted = sorted({i for i in ids if i})
    if not wanted:
        return {}
    answer = client.call(f"{service}.get_all", {"id": wanted, "only_fields": ["id", "name"]})
    return {item["id"]: item.get("name", "") for item in answer.get(service) or []}


def project_names(client: ApiClient, ids: Iterable[str | None]) -> dict[str, str]:
    return _names_by_id(client, "projects", ids)


def user_names(client: ApiClient, ids: Iterable[str | None]) -> dict[str, str]:
    """Task owners' names by user id."""
    return _names_by_id(client, "users", ids)


def find_queue(client: ApiClient, name_or_id: str) -> dict[str, Any]:
    """A queue by id, else by exact name; SpecError when there is none."""
    if not name_or_id:
        raise SpecError("The queue name is empty — give a queue name or id (`conveyor queue list`)")
    answer = client.call("queues.get_all", {"id": [name_or_id]})
    if answer.get("queues"):
        return answer["queues"][0]
    answer = client.call("queues.get_all", {"name": exact_name_regex(name_or_id), "search_hidden": True})
    found = _pick_by_name(answer.get("queues") or [], name_or_id)
    if found is None:
        raise SpecError(f"No queue named {name_or_id!r} — `conveyor queue list` shows the queues, "
                        f"`conveyor queue create {name_or_id}` makes it")
    return found


def queue_names(client: ApiClient, ids: Iterable[str | None]) -> dict[str, str]:
    return _names_by_id(client, "queues", ids)


def get_task(client: ApiClient, task_id: str, only_fields: list[str] | None = None) -> dict[str, Any]:
    """The task document (or the fields asked for); SpecError naming the id when there is no such task."""
    body: dict[str, Any] = {"id": [task_id], "search_hidden": True}
    if only_fields:
        body["only_fields"] = only_fields
    tasks = (client.call("tasks.get_all", body).get("tasks") or []) if task_id else []
    if not tasks:
        raise SpecError(f"No task with id {task_id!r} — `conveyor task list` shows the task ids")
    return tasks[0]
