"""`conveyor task …`: record a task from code (as `clearml-task` does), and list, show, follow and steer tasks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.agent.timeline import SPANS, epoch
from conveyor.cli._output import age, local_time, print_json, print_table, safe_url, warn
from conveyor.protocol import failure
from conveyor.protocol.status import FINAL_VALUES, STOPPING, TaskStatus
from conveyor.protocol.task_types import DEFAULT_TASK_TYPE, TASK_TYPES

if TYPE_CHECKING:  # imported where used: `conveyor --help` need not load httpx or git helpers
    from conveyor.client.api import ApiClient
    from conveyor.client.task_builder import ScriptSource
    from conveyor.env.repo_state import RepoState

STATUSES = tuple(s.value for s in TaskStatus)
LOG_POLL_SEC = 0.5  # how often `task logs --follow` asks for new lines
LOG_BATCH = 500  # log events per events.get_task_log call
HISTORY_SHOWN = 10  # status changes `task show` prints (the newest)
LIST_FIELDS = ["id", "name", "status", "project", "user", "last_update", "execution.queue", "type", failure.FIELD]


# --- arguments --------------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("task", help="create, list, show, follow and steer tasks")
    cmds = p.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    _register_create(cmds)
    _register_edit(cmds)

    ls = cmds.add_parser("list", help="list tasks, most recently updated first")
    ls.add_argument("--status", nargs="+", choices=STATUSES, metavar="STATUS", help=f"any of: {', '.join(STATUSES)}")
    ls.add_argument("--project", help="project name")
    ls.add_argument("--name", metavar="REGEX", help="task names matching this regex (case-insensitive)")
    ls.add_argument("--queue", help="tasks enqueued to this queue (name or id)")
    ls.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N tasks (default 50)")
    ls.add_argument("--json", action="store_true", help="print the tasks as the server returns them")
    ls.set_defaults(func=list_tasks)

    show = cmds.add_parser("show", help="show one task: status, code, arguments, queue, worker, times")
    show.add_argument("task", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the whole task document")
    show.set_defaults(func=show_task)

    logs = cmds.add_parser("logs", help="print a task's console log")
    logs.add_argument("task", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the task ends")
    logs.add_argument("--json", action="store_true", help="one JSON log event per line")
    logs.set_defaults(func=task_logs)

    clone = cmds.add_parser("clone", help="copy a task as a new draft (optionally enqueue the copy)")
    clone.add_argument("task", metavar="ID")
    clone.add_argument("--name", help="name of the copy (default: the original's)")
    clone.add_argument("--queue", help="enqueue the copy to this queue (name or id)")
    clone.add_argument("--json", action="store_true", help="print the server's answers as JSON")
    clone.set_defaults(func=clone_task)

    enq = cmds.add_parser("enqueue", help="put a task on a queue")
    enq.add_argument("task", metavar="ID")
    enq.add_argument("--queue", required=True, help="queue name or id")
    enq.set_defaults(func=enqueue_task)

    abort = cmds.add_parser("abort", help="stop a queued or running task")
    abort.add_argument("task", metavar="ID")
    abort.set_defaults(func=abort_task)

    reset = cmds.add_parser("reset", help="bring a task back to draft (created), dropping its logs and results")
    reset.add_argument("task", metavar="ID")
    reset.add_argument("--force", action="store_true", help="also reset a running or published task")
    reset.set_defaults(func=reset_task)

    delete = cmds.add_parser("delete", help="delete a task with its logs")
    delete.add_argument("task", metavar="ID")
    delete.add_argument("--force", action="store_true", help="also delete a running task")
    delete.set_defaults(func=delete_task)


def _register_create(cmds: argparse._SubParsersAction) -> None:
    c = cmds.add_parser(
        "create", help="record code, arguments and environment as a task (like clearml-task)",
        description="Record a task: with --repo pointing at a local git working copy, its remote URL, branch, commit "
                    "and uncommitted changes (git diff HEAD); with --repo URL, that URL and --branch/--commit.")
    c.add_argument("--name", required=True, help="task name")
    c.add_argument("--project", help="project name (created when missing)")
    c.add_argument("--repo", help="a local git working copy (e.g. .) or a git URL; default: the repository holding "
                                  "--script, else the script alone")
    ref = c.add_mutually_exclusive_group()
    ref.add_argument("--branch", help="branch to check out (with --repo URL)")
    ref.add_argument("--commit", help="commit to check out (with --repo URL)")
    c.add_argument("--script", required=True, help="entry point relative to the repository root, or '-m module'")
    c.add_argument("--working-dir", help="folder to run in, relative to the repository root (default: the root)")
    c.add_argument("--args", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="arguments of the script (hyper-parameter section Args); repeatable")
    reqs = c.add_mutually_exclusive_group()
    reqs.add_argument("--requirements", metavar="FILE", help="pip requirements file to install")
    reqs.add_argument("--packages", nargs="+", metavar="PKG", help="pip packages to install")
    c.add_argument("--docker", metavar="IMAGE", help="container image to run in (agents in docker mode)")
    c.add_argument("--docker-args", metavar="ARGS",
                   help="extra arguments of `docker run`; write --docker-args='--ipc=host' when they start with -")
    c.add_argument("--docker-bash-setup-script", metavar="FILE", help="bash script run in the container first")
    c.add_argument("--type", choices=TASK_TYPES, metavar="TYPE", help=f"task type (default {DEFAULT_TASK_TYPE.value})")
    c.add_argument("--binary", help="interpreter to run the script with, e.g. python3.11 (default python3)")
    c.add_argument("--queue", help="enqueue the task to this queue (name or id)")
    c.add_argument("--json", action="store_true", help="print the new task and the server's answers as JSON")
    c.set_defaults(func=create_task)


def _register_edit(cmds: argparse._SubParsersAction) -> None:
    e = cmds.add_parser(
        "edit", help="change a draft task: arguments, parameters, packages, container, code (prints what changed)",
        description="Change a draft (created) task before it runs. A task that ran, or is queued or running, is not "
                    "edited: `conveyor task clone ID` makes an editable draft of it.")
    e.add_argument("task", metavar="ID")
    e.add_argument("--name", help="new task name")
    e.add_argument("--comment", help="new description (comment)")
    e.add_argument("--args", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="set arguments of the script (hyper-parameter section Args); repeatable")
    e.add_argument("--param", nargs="+", action="extend", default=[], metavar="SECTION/NAME=VALUE",
                   help="set a hyper-parameter of any section, e.g. General/epochs=10; repeatable")
    e.add_argument("--delete-param", nargs="+", action="extend", default=[], metavar="SECTION/NAME",
                   help="delete a hyper-parameter (SECTION alone: the whole section); repeatable")
    reqs = e.add_mutually_exclusive_group()
    reqs.add_argument("--requirements", metavar="FILE", help="pip requirements file: the packages the agent installs")
    reqs.add_argument("--packages", nargs="+", metavar="PKG", help="pip packages the agent installs (the new list)")
    e.add_argument("--docker", metavar="IMAGE", help="container image to run in (agents in docker mode; '' clears it)")
    e.add_argument("--docker-args", metavar="ARGS",
                   help="extra arguments of `docker run`; write --docker-args='--ipc=host' when they start with -")
    e.add_argument("--setup-script", "--docker-bash-setup-script", dest="setup_script", metavar="FILE",
                   help="shell script sourced before the environment is built ('' clears it)")
    e.add_argument("--repo", metavar="URL", help="git repository URL to check out")
    e.add_argument("--branch", help="branch to check out (drops a recorded commit unless --commit is given)")
    e.add_argument("--commit", help="commit to check out")
    e.add_argument("--script", metavar="ENTRY", help="entry point relative to the working dir, or '-m module'")
    e.add_argument("--cwd", "--working-dir", dest="cwd", metavar="DIR",
                   help="folder to run in, relative to the repository root")
    e.add_argument("--json", action="store_true", help="print the server's answers and the edited task as JSON")
    e.set_defaults(func=edit_task)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _client(args: argparse.Namespace) -> ApiClient:
    from conveyor.cli.common import client_of

    return client_of(args)


# --- create -----------------------------------------------------------------------------------------------------
def _source(args: argparse.Namespace, working_dir: str) -> tuple[ScriptSource, str, list[str]]:
    """(ScriptSource, entry point relative to the repository root, warnings) from --repo/--script/--branch/--commit."""
    from conveyor.client.task_builder import ScriptSource, SpecError
    from conveyor.env import repo_state as rs

    # a RepoError (a ConveyorError) reaches run_command, which prints its message as it is
    if args.repo and rs.is_remote_url(args.repo):
        return ScriptSource(rs.strip_credentials(args.repo), args.branch or "", args.commit or ""), args.script, []
    if args.branch or args.commit:
        raise SpecError("--branch/--commit go with --repo URL — a local repository records its own branch and "
                        "commit: check out what you want to run first")
    module = args.script.startswith("-m ")
    if args.repo is None and not module:
        # No --repo: the repository holding the script (a path from here), as clearml-task finds it.
        script_path = Path(args.script).expanduser().resolve()
        if not _in_repo(script_path):
            return _standalone(args.script)
        state, script = rs.inspect_local_repo(script_path.parent), str(script_path)
    else:
        state, script = rs.inspect_local_repo(Path(args.repo or ".")), args.script
    rs.check_working_dir(state.root, working_dir)
    script = rs.locate_script(state.root, script, working_dir,
                              base=Path(args.repo).expanduser().resolve() if args.repo else None)
    return ScriptSource(state.url, state.branch, state.commit, state.diff), script, _warnings(state)


def _in_repo(script: Path) -> bool:
    from conveyor.env import repo_state as rs

    try:
        rs.find_root(script.parent)
    except rs.RepoError:
        return False
    return True


def _standalone(script: str) -> tuple[ScriptSource, str, list[str]]:
    """A script outside any repository travels whole in `diff` with no repository (ClearML's "literal script")."""
    from conveyor.client.task_builder import ScriptSource, read_option_file

    text = read_option_file(script, "--script")
    note = f"{script} is not in a git repository: recording the script alone (no other files reach the agent)"
    return ScriptSource("", diff=text), Path(script).name, [note]


def _warnings(state: RepoState) -> list[str]:
    notes = []
    if state.untracked:
        shown = ", ".join(state.untracked[:5]) + (" …" if len(state.untracked) > 5 else "")
        notes.append(f"{len(state.untracked)} untracked file(s) are not recorded and will not reach the agent "
                     f"(`git add` them to include them): {shown}")
    if not state.pushed:
        notes.append(f"commit {state.commit[:12]} is not on any branch of {state.remote} (as last fetched) — "
                     "push it, or the agent cannot check it out")
    if state.url.startswith("file://"):
        where = f"its remote {state.remote} is a local path" if state.remote else "the repository has no remote"
        notes.append(f"{where}: recording {state.url}, which only agents on this machine can clone")
    return notes


def _prepare(args: argparse.Namespace, client: ApiClient) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    """The tasks.create body, the queue to enqueue to, and warnings about the recorded code. Local checks (options,
    files, the repository) come first, then the queue look-up, and only then the project is made: a bad command
    leaves nothing behind on the server."""
    from conveyor.client import task_builder as tb

    name = tb.task_name(args.name)
    params = tb.hyperparams(tb.parse_args(args.args))
    working_dir = tb.normalize_dir(args.working_dir)
    reqs = tb.requirements(tb.read_option_file(args.requirements, "--requirements") if args.requirements else None,
                           args.packages)
    setup = (tb.read_option_file(args.docker_bash_setup_script, "--docker-bash-setup-script")
             if args.docker_bash_setup_script else None)
    container = tb.container_section(args.docker, args.docker_args, setup)
    source, script, notes = _source(args, working_dir)
    if source.repository:
        script_part = tb.script_section(source, tb.entry_point(script, working_dir), working_dir=working_dir,
                                        binary=args.binary, reqs=reqs)
    else:  # a standalone script runs from the folder it is written to
        script_part = tb.script_section(source, script, binary=args.binary, reqs=reqs)
    queue = tb.find_queue(client, args.queue) if args.queue else None
    project = tb.project_id(client, args.project, create=True) if args.project else None
    return tb.create_body(name=name, project=project, task_type=args.type, params=params, container=container,
                          script=script_part), queue, notes


def create_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    body, queue, notes = _prepare(args, client)
    for note in notes:  # only now: a command that fails shows just its error
        warn(note)
    created = client.call("tasks.create", body)
    enqueued = client.call("tasks.enqueue", {"task": created["id"], "queue": queue["id"]}) if queue else None
    if args.json:
        print_json({"id": created["id"], "created": created, "enqueued": enqueued,
                    "task": _redacted(tb.get_task(client, created["id"]))})
    else:
        print(created["id"])
        if queue:
            print(f"Enqueued to {queue['name']}", file=sys.stderr)
    return 0


# --- edit -------------------------------------------------------------------------------------------------------
def _edit_plan(args: argparse.Namespace, task: dict[str, Any]) -> Any:  # task_edit.EditPlan
    """The calls of the edit, from the options; local checks (files, values) before anything is sent."""
    from conveyor.client import task_builder as tb
    from conveyor.client import task_edit
    from conveyor.env import repo_state as rs

    pip_text = None
    if args.requirements is not None:
        pip_text = tb.read_option_file(args.requirements, "--requirements")
    elif args.packages is not None:
        pip_text = (tb.requirements(None, args.packages) or {}).get("pip", "")
    script: dict[str, str] = {}
    if args.repo is not None:
        if not rs.is_remote_url(args.repo):
            raise tb.SpecError(f"--repo {args.repo!r} is not a git URL — give the URL agents clone, e.g. "
                               "https://github.com/you/repo.git")
        script["repository"] = rs.strip_credentials(args.repo)
    for option, key in (("branch", "branch"), ("commit", "version_num"), ("script", "entry_point")):
        if getattr(args, option) is not None:
            script[key] = getattr(args, option).strip()
    if args.cwd is not None:
        script["working_dir"] = tb.normalize_dir(args.cwd)
    container: dict[str, str] = {}
    for value, key in ((args.docker, "image"), (args.docker_args, "arguments")):
        if value is not None:
            container[key] = value.strip()
    if args.setup_script is not None:
        container["setup_shell_script"] = (tb.read_option_file(args.setup_script, "--setup-script")
                                           if args.setup_script else "")
    return task_edit.plan(task, name=args.name, comment=args.comment, args=args.args, params=args.param,
                          delete_params=args.delete_param, pip_text=pip_text, script=script, container=container)


def edit_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb
    from conveyor.client import task_edit

    client = _client(args)
    before = tb.get_task(client, args.task)
    task_id = before["id"]
    status = before.get("status") or TaskStatus.created.value
    if status != TaskStatus.created:
        raise tb.SpecError(f"Task {task_id} is {status}: only a draft (created) task can be edited — "
                           f"`conveyor task clone {task_id}` makes an editable copy (then `conveyor task edit` the "
                           "new id)")
    edit = _edit_plan(args, before)
    if edit.empty():
        raise tb.SpecError("Nothing to change — give what to edit, e.g. --args lr=0.01, --param General/epochs=10, "
                           "--packages numpy, --docker IMAGE (`conveyor task edit --help` lists them all)")
    answers: dict[str, Any] = {}
    # a whole section deleted first: a parameter set in it by the same command then stays
    if edit.deleted:
        answers["delete_hyper_params"] = client.call("tasks.delete_hyper_params",
                                                     {"task": task_id, "hyperparams": edit.deleted})
    if edit.params:
        answers["edit_hyper_params"] = client.call("tasks.edit_hyper_params",
                                                   {"task": task_id, "hyperparams": edit.params})
    if edit.requirements is not None:
        answers["set_requirements"] = client.call("tasks.set_requirements",
                                                  {"task": task_id, "requirements": edit.requirements})
    if edit.edit:
        answers["edit"] = client.call("tasks.edit", {"task": task_id, **edit.edit})
    after = tb.get_task(client, task_id)
    if args.json:
        if "edit" in answers:  # tasks.edit answers the whole script it changed, the repository with it
            fields = answers["edit"].get("fields") or {}
            answers["edit"] = {**answers["edit"], "fields": _redacted(fields)}
        print_json({"id": task_id, "answers": answers, "task": _redacted(after)})
        return 0
    for note in edit.notes:
        warn(note)
    lines = task_edit.changes(_redacted(before), _redacted(after))
    print(f"Edited {task_id} ({after.get('name', '')})" + ("" if lines else ": no value changed"))
    for line in lines:
        print(f"  {line}")
    return 0


# --- list and show ----------------------------------------------------------------------------------------------
def _list_body(args: argparse.Namespace, client: ApiClient) -> dict[str, Any]:
    import re

    from conveyor.client import task_builder as tb

    body: dict[str, Any] = {"order_by": ["-last_update"]}
    if args.status:
        body["status"] = args.status
    if args.project:
        body["project"] = [tb.project_id(client, args.project)]
    if args.name:
        try:
            re.compile(args.name)
        except re.error as exc:
            raise tb.SpecError(f"--name {args.name!r} is not a valid regex ({exc}) — e.g. --name '^mnist'") from None
        body["name"] = args.name
    if not args.json:
        body["only_fields"] = LIST_FIELDS
    return body


def _matching_tasks(client: ApiClient, body: dict[str, Any], queue_id: str | None, limit: int) -> list[dict[str, Any]]:
    """Pages through tasks.get_all; the queue is matched here (tasks.get_all has no filter on execution.queue)."""
    if queue_id is None:
        return client.call("tasks.get_all", {**body, "page": 0, "page_size": limit}).get("tasks") or []
    found: list[dict[str, Any]] = []
    page_size = max(limit, 200)
    for page in range(10_000):
        batch = client.call("tasks.get_all", {**body, "page": page, "page_size": page_size}).get("tasks") or []
        found += [t for t in batch if (t.get("execution") or {}).get("queue") == queue_id]
        if len(found) >= limit or len(batch) < page_size:
            break
    return found[:limit]


def list_tasks(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    body = _list_body(args, client)
    queue_id = tb.find_queue(client, args.queue)["id"] if args.queue else None
    tasks = _matching_tasks(client, body, queue_id, args.limit)
    if args.json:
        print_json({"tasks": [_redacted(t) for t in tasks]})
        return 0
    projects = tb.project_names(client, (t.get("project") for t in tasks))
    owners = tb.user_names(client, (t.get("user") for t in tasks))
    rows = [(t["id"], t.get("name", ""), failure.shown(t.get("status", ""), t.get(failure.FIELD)),
             projects.get(t.get("project") or "", ""), owners.get(t.get("user") or "", t.get("user") or ""),
             local_time(t.get("last_update"))) for t in tasks]
    print_table(("ID", "NAME", "STATUS", "PROJECT", "OWNER", "LAST UPDATE"), rows, empty="No tasks match")
    return 0


def _redacted(task: dict[str, Any]) -> dict[str, Any]:
    """Credentials in a repository URL (another client may have stored one) are never printed."""
    script = task.get("script")
    if isinstance(script, dict) and script.get("repository"):
        task = {**task, "script": {**script, "repository": safe_url(script["repository"])}}
    return task


def show_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    task = tb.get_task(client, args.task)
    if args.json:
        print_json(_redacted(task))
        return 0
    for label, value in _summary(client, task):
        if value not in (None, ""):
            print(f"{label + ':':<14}{value}")
    for i, line in enumerate(_attempts(task.get(failure.ATTEMPTS_FIELD) or [])):
        print(f"{'Attempts:' if i == 0 else '':<14}{line}")
    for i, line in enumerate(_history(task.get("status_history") or [])):
        print(f"{'History:' if i == 0 else '':<14}{line}")
    for i, line in enumerate(_timeline(task.get("timeline"))):
        print(f"{'Timeline:' if i == 0 else '':<14}{line}")
    return 0


def _timeline(timeline: Any) -> list[str]:
    """The last run's startup timeline: each moment (local time, to the millisecond) with the span before it, then
    enqueue to first output (the pickup) and to the end."""
    if not isinstance(timeline, dict) or not timeline.get("marks"):
        return []
    spans = dict(SPANS)
    lines = []
    for mark in timeline["marks"]:
        ts = epoch(mark.get("time"))
        when = "" if ts is None else datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]
        name = str(mark.get("mark", ""))
        after = mark.get("after_sec")
        span = f"+{after:.3f} s {spans.get(name, '')}" if isinstance(after, (int, float)) else ""
        lines.append(f"{when}  {name.replace('_', ' '):<19}{span}".rstrip())
    durations = timeline.get("durations") or {}
    summary = [f"{label} {durations[key]:.3f} s" for key, label in
               (("pickup", "enqueued to first output"), ("total", "enqueued to end")) if key in durations]
    if timeline.get("worker"):
        summary.append(f"on {timeline['worker']}")
    if summary:
        lines.append(", ".join(summary))
    return lines


def _attempts(entries: list[dict[str, Any]]) -> list[str]:
    """The task's failed runs, one a line: number, worker, reason with its class, and whether it was retried."""
    return [f"#{a.get('attempt')}  {local_time(a.get('time'))}  " + "  ".join(filter(None, (
        f"on {a['worker']}" if a.get("worker") else "", failure.shown(a.get("reason") or "", a.get(failure.FIELD)),
        "retried" if a.get("retried") else ""))) for a in entries if isinstance(a, dict)]


def _history(entries: list[dict[str, Any]]) -> list[str]:
    """The last status changes, one a line: time, status, worker and reason (docs/status-history.md)."""
    shown = entries[-HISTORY_SHOWN:]
    lines = [f"({len(entries) - len(shown)} earlier changes: `conveyor task show --json`)"] \
        if len(entries) > len(shown) else []
    for entry in shown:
        details = [f"on {entry['worker']}" if entry.get("worker") else "", entry.get("reason") or ""]
        lines.append(f"{local_time(entry.get('time'))}  {str(entry.get('status', '')):<12}"
                     f"{'  '.join(d for d in details if d)}".rstrip())
    return lines


def _summary(client: ApiClient, task: dict[str, Any]) -> list[tuple[str, Any]]:
    from conveyor.client import task_builder as tb

    script = task.get("script") or {}
    queue_id = (task.get("execution") or {}).get("queue")
    queue_name = tb.queue_names(client, [queue_id]).get(queue_id, "") if queue_id else ""
    project = tb.project_names(client, [task.get("project")]).get(task.get("project") or "", "")
    # Args as given to `task create`; other sections (an SDK's General, …) as Section/name.
    params = [(name if section == tb.ARGS_SECTION else f"{section}/{name}", str((p or {}).get("value", "")))
              for section, entries in (task.get("hyperparams") or {}).items() for name, p in (entries or {}).items()]
    reqs = (script.get("requirements") or {}).get("pip")
    reqs_text = reqs if isinstance(reqs, str) else "\n".join(reqs or [])
    container = task.get("container") or {}
    diff = script.get("diff") or ""
    status = str(task.get("status") or "") + (f" ({task['status_message']})" if task.get("status_message") else "")
    changes = f"{len(diff.splitlines())} line(s) of uncommitted changes" if diff and script.get("repository") else ""
    packages = [line.strip() for line in reqs_text.splitlines() if line.strip() and not line.startswith("#")]
    return [
        ("Task", f"{task['id']}  {task.get('name', '')}"),
        ("Project", project),
        ("Owner", tb.user_names(client, [task.get("user")]).get(task.get("user") or "", task.get("user") or "")),
        ("Type", task.get("type")),
        ("Status", status),
        ("Reason", failure.shown(task.get("status_reason") or "", task.get(failure.FIELD))),
        ("Repository", safe_url(script.get("repository") or "") or ("(standalone script)" if script else "")),
        ("Branch", script.get("branch")),
        ("Commit", script.get("version_num")),
        ("Entry point", script.get("entry_point")),
        ("Working dir", script.get("working_dir")),
        ("Binary", script.get("binary")),
        ("Diff", changes),
        ("Args", " ".join(f"{name}={value}" for name, value in params)),
        ("Requirements", ", ".join(packages)),
        ("Container", " ".join(filter(None, (container.get("image"), container.get("arguments"))))),
        ("Queue", f"{queue_name} ({queue_id})" if queue_name else queue_id),
        ("Worker", task.get("last_worker")),
        ("Created", local_time(task.get("created"))),
        ("Started", local_time(task.get("started"))),
        ("Completed", local_time(task.get("completed"))),
        ("Last update", f"{local_time(task.get('last_update'))} ({age(task.get('last_update'))})"
         if task.get("last_update") else ""),
    ]


# --- logs -------------------------------------------------------------------------------------------------------
def _log_page(client: ApiClient, task_id: str, scroll_id: str) -> tuple[list[dict[str, Any]], str]:
    body = {"task": task_id, "order": "asc", "batch_size": LOG_BATCH}
    if scroll_id:
        body["scroll_id"] = scroll_id
    data = client.call("events.get_task_log", body)
    return data.get("events") or [], data.get("scroll_id") or scroll_id


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(event, default=str))
        return
    msg = str(event.get("msg", ""))
    sys.stdout.write(msg if msg.endswith("\n") else msg + "\n")


def _drain(client: ApiClient, task_id: str, scroll_id: str, as_json: bool) -> tuple[int, str]:
    """Print every line after `scroll_id`; returns how many were printed and the new cursor."""
    printed = 0
    while True:
        events, scroll_id = _log_page(client, task_id, scroll_id)
        for event in events:
            _print_event(event, as_json)
        printed += len(events)
        if len(events) < LOG_BATCH:
            sys.stdout.flush()
            return printed, scroll_id


def _say_where_it_waits(client: ApiClient, task: dict[str, Any]) -> None:
    """A queued task shows no lines: say on stderr which queue holds it and whether a worker serves that queue."""
    from conveyor.client import task_builder as tb

    queue_id = (task.get("execution") or {}).get("queue")
    if task.get("status") != TaskStatus.queued or not queue_id:
        return
    name = tb.queue_names(client, [queue_id]).get(queue_id) or queue_id
    workers = [w["id"] for w in client.call("workers.get_all", {}).get("workers") or []
               if any((q or {}).get("id") == queue_id for q in w.get("queues") or [])]
    where = f"served by {', '.join(workers)}" if workers else \
        f"no worker serves it — start one with `conveyor daemon --queue {name}`"
    print(f"conveyor: task {task['id']} waits in queue {name} ({where}); following its log", file=sys.stderr,
          flush=True)


def task_logs(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    task = tb.get_task(client, args.task, only_fields=["id", "status", "execution.queue"])
    task_id = task["id"]
    printed, scroll_id = _drain(client, task_id, "", args.json)
    if args.follow:
        _say_where_it_waits(client, task)
    while args.follow:
        if printed:
            time.sleep(LOG_POLL_SEC)
            printed, scroll_id = _drain(client, task_id, scroll_id, args.json)
            continue
        # Nothing new: stop once the task has ended, after a last look for lines sent just before it ended.
        status = tb.get_task(client, task_id, only_fields=["status"]).get("status")
        if status in FINAL_VALUES:  # `logs --follow` stops at these once no more lines come
            printed, scroll_id = _drain(client, task_id, scroll_id, args.json)
            if not printed:
                break
            continue
        time.sleep(LOG_POLL_SEC)
        printed, scroll_id = _drain(client, task_id, scroll_id, args.json)
    return 0


# --- steering ---------------------------------------------------------------------------------------------------
def clone_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    source = tb.get_task(client, args.task, only_fields=["id", "name"])
    queue = tb.find_queue(client, args.queue) if args.queue else None
    body: dict[str, Any] = {"task": source["id"]}
    if args.name:
        body["new_task_name"] = args.name
    cloned = client.call("tasks.clone", body)
    enqueued = client.call("tasks.enqueue", {"task": cloned["id"], "queue": queue["id"]}) if queue else None
    if args.json:
        print_json({"id": cloned["id"], "cloned": cloned, "enqueued": enqueued})
    else:
        print(cloned["id"])
        if queue:
            print(f"Enqueued to {queue['name']}", file=sys.stderr)
    return 0


def enqueue_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    task = tb.get_task(client, args.task, only_fields=["id", "status"])
    queue = tb.find_queue(client, args.queue)
    if task.get("status") in (TaskStatus.queued, TaskStatus.in_progress):
        state = "already queued" if task["status"] == TaskStatus.queued else "running"
        raise tb.SpecError(f"Task {task['id']} is {state} — `conveyor task abort {task['id']}` first")
    client.call("tasks.enqueue", {"task": task["id"], "queue": queue["id"]})
    print(f"Enqueued {task['id']} to {queue['name']}")
    return 0


def abort_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    task = tb.get_task(client, args.task, only_fields=["id", "status"])
    if task.get("status") not in (TaskStatus.queued, TaskStatus.in_progress, TaskStatus.created):
        raise tb.SpecError(f"Task {task['id']} is {task.get('status')}: only a queued or running task can be aborted")
    answer = client.call("tasks.stop", {"task": task["id"]})
    if (answer.get("fields") or {}).get("status_message") == STOPPING:
        print(f"Asked the worker to stop {task['id']}; it will be stopped shortly")
    else:
        print(f"Stopped {task['id']}")
    return 0


def reset_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    task = tb.get_task(client, args.task, only_fields=["id", "status"])
    if task.get("status") in (TaskStatus.in_progress, TaskStatus.published) and not args.force:
        abort_first = " (or `conveyor task abort` it first)" if task["status"] == TaskStatus.in_progress else ""
        raise tb.SpecError(f"Task {task['id']} is {task['status']} — use --force to reset it anyway{abort_first}")
    client.call("tasks.reset", {"task": task["id"], "force": bool(args.force)})
    print(f"Reset {task['id']} to created")
    return 0


def delete_task(args: argparse.Namespace) -> int:
    from conveyor.client import task_builder as tb

    client = _client(args)
    task = tb.get_task(client, args.task, only_fields=["id", "status"])
    if task.get("status") == TaskStatus.in_progress and not args.force:
        raise tb.SpecError(f"Task {task['id']} is running — `conveyor task abort {task['id']}` first, "
                           "or use --force to delete it anyway")
    client.call("tasks.delete", {"task": task["id"], "force": bool(args.force)})
    print(f"Deleted {task['id']}")
    return 0
