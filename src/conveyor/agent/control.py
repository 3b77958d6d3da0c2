"""Managing daemons on this machine: start one in the background, list them, stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from conveyor.agent.identity import running_daemons
from conveyor.runtimes.run_records import agent_dir


def mask_argv(argv: list[str]) -> list[str]:
    """Command lines are shown by --status: never with a password in them."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--git-pass" and i + 1 < len(out):
            out[i + 1] = "****"
        elif arg.startswith("--git-pass="):
            out[i] = "--git-pass=****"
    return out


def detach(argv: list[str]) -> int:
    """Start `conveyor <argv>` without --detached in a new session, its output in a log file."""
    args = [a for a in argv if a not in ("--detached", "-d")]
    log_dir = agent_dir() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"daemon-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", *args, "--log-file", str(log_file)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    # A daemon that cannot start (unknown queue, server down) says so within a moment: show it here.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            _complain("conveyor: the daemon exited at once:\n  " + "\n  ".join(tail))
            return 2
        if "serving" in log_file.read_text(errors="replace"):
            break
        time.sleep(0.1)
    _say(f"conveyor agent started in the background (pid {proc.pid}); log: {log_file}")
    _say("stop it with: " + " ".join(mask_argv(["conveyor", *args, "--stop"])))
    return 0


def print_status() -> int:
    daemons = running_daemons()
    if not daemons:
        _say("no conveyor daemon is running on this machine")
        return 0
    for d in daemons:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.get("started", 0)))
        _say(f"{d.get('worker_id', '?')}  pid {d.get('pid')}  queues {', '.join(d.get('queues') or [])}  "
              f"since {started}" + (f"  log {d['log_file']}" if d.get("log_file") else ""))
        if d.get("schedule"):  # written by the daemon as it goes (working_hours.publish)
            state = (d.get("state") or "active").replace("_", " ")
            _say(f"  schedule: {d['schedule']};  state: {state}" + (f" ({d['state_reason']})"
                                                                   if d.get("state_reason") else ""))
            tags = "; ".join(f"{q}: {', '.join(t) or '-'}" for q, t in (d.get("queue_tags") or {}).items())
            _say(f"  queue tags: {tags or '-'}")
    return 0


def _command_line(daemon: dict[str, Any]) -> str:
    """How a daemon was started, as a user would type it again (no log file, no --detached)."""
    argv, shown, skip = daemon.get("argv") or [], [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-file":
            skip = True
        elif arg not in ("--detached", "-d") and not arg.startswith("--log-file="):
            shown.append(arg)
    return " ".join(shown) or "?"


def _started_alike(daemon: dict[str, Any], wanted: dict[str, Any]) -> bool:
    recorded = daemon.get("started_with")
    if not recorded:
        return False  # described by an older version: stopped only by its worker id
    if {k: v for k, v in recorded.items() if k != "queues"} != {k: v for k, v in wanted.items() if k != "queues"}:
        return False
    # `--queue default` also finds the daemon started with no --queue that serves the default queue
    served = sorted(q.lower() for q in daemon.get("queues") or [])
    return wanted["queues"] == recorded["queues"] or [q.lower() for q in wanted["queues"]] == served


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still alive after `timeout`. An exited daemon that its parent has not reaped yet (a zombie)
    counts as gone: psutil.wait_procs would wait for the reaping."""
    def alive(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    left = [p for p in procs if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def stop(worker_ids: list[str], wanted: dict[str, Any]) -> int:
    """Stop the listed workers, else the daemons started with the same arguments (`wanted`, see
    identity.started_with). `conveyor up` is stopped only by its worker id.
    First SIGTERM (drain); after 10 s a second one (stop the tasks, marked stopped); then SIGKILL."""
    daemons = running_daemons()
    if not daemons:
        _complain("conveyor: no conveyor daemon is running on this machine")
        return 2
    if worker_ids:
        chosen = [d for d in daemons if d.get("worker_id") in worker_ids]
        unknown = sorted(set(worker_ids) - {d.get("worker_id") for d in chosen})
    else:
        chosen, unknown = [d for d in daemons if _started_alike(d, wanted)], []
    if not chosen:
        running = "; ".join(f"{d.get('worker_id')} ({_command_line(d)})" for d in daemons)
        what = f"no daemon with worker id {', '.join(unknown)}" if worker_ids else \
            "no daemon started with these arguments"
        _complain(f"conveyor: {what} runs on this machine — running: {running}; stop one with "
                  "`conveyor daemon --stop WORKER_ID` or with the arguments it was started with plus --stop")
        return 2
    procs = []
    for d in chosen:
        try:
            proc = psutil.Process(int(d["pid"]))
            proc.send_signal(signal.SIGTERM)
            procs.append((d, proc))
        except (psutil.Error, KeyError, ValueError):
            continue
    alive = _wait_gone([p for _, p in procs], timeout=10)
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    for proc in _wait_gone(alive, timeout=20):
        proc.kill()
    for d, _ in procs:
        _say(f"stopped {d.get('worker_id')} (pid {d.get('pid')})")
    if unknown:
        _complain(f"conveyor: no daemon with worker id {', '.join(unknown)} runs on this machine")
        return 2
    return 0


def _say(text: str) -> None:
    """The command's own output (`conveyor daemon --status / --stop / --detached`), on its terminal."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _complain(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


__all__ = ["detach", "mask_argv", "print_status", "stop"]
