"""Soak benchmark: real daemons on PostgreSQL behind two server processes, thousands of short tasks, with one server
restarted and two daemons SIGKILLed and restarted along the way.

    python bench/soak.py [--tasks 5000] [--daemons 32] [--sleep 1] [--drain 300] [--window 60] [--keep]

Two `conveyor server` processes share one fresh PostgreSQL database (the second one gets the first one's
credentials, as a second replica would); half the daemons talk to each. Every daemon has its own worker id and
all share one venv cache, so that a task costs a real run through the agent (`conveyor execute`: a standalone
script, the cached empty environment, log shipping, final status) and little else. The queue allows 2 retries
(its `retries` metadata), so that a run lost with a dead worker goes back to the queue; the agents' other
settings are the defaults. The tasks are created and the daemons started first; the tasks are enqueued through
both servers while the queue is paused (tagged force_workers:off), and the run starts when the tag is removed.

Faults, by finished runs: at 25 % the daemon whose run started last is SIGKILLed and started again with the same
worker id (it adopts the run its predecessor left: the run's code is held before its end until the new daemon is
up, so that there is a run to adopt); at 50 % the first server gets SIGTERM and is started again on the same port;
at 75 % a second daemon as the first.

Each task's code appends `start <time>` to a file named by its task id in a shared folder, prints the line
`soak <task id>`, sleeps --sleep seconds and appends `end <time>` as its last act. Counted per task at the end:
- completed: final status `completed` and its code finished (an `end` line) exactly once;
- duplicates: its code finished more than once. A run killed before its end that was then run again (a retry,
  counted as `rerun` beside the others) is not a duplicate: only user code that ran to its end twice is;
- losses: a final status other than `completed`, or `completed` without an `end` line (the code never finished);
- stuck: not final (created, queued, in_progress) when nothing changed for --drain seconds.
All but `completed` must be 0, and `completed` must be --tasks. Beside them: the killed daemons' in-flight tasks
and whether their restarted daemons adopted them, and the tasks whose log lacks their `soak <id>` line.

Throughput is finished runs (`end` lines) per minute over --window windows from the lifted pause (the last,
partial window left out): median and spread, and the whole run's average. The reference, measured in the same
run, is the rate of the same daemons before the first fault; the rate after it is printed beside it. Each
server's RSS is read after its start (before any task), just before the restart (the restarted one), and after
the drain. Also printed: CPU seconds per task (the servers, and the daemons with all they ran; PostgreSQL's
processes not counted) with the ceiling that sets on this machine's cores, and the warnings, errors and
tracebacks in the servers' and daemons' logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agentkit import FINAL, DaemonProcess, agent_env, create_task, log_text  # noqa: E402
from conftest import ServerProcess, pg_database  # noqa: E402
from conveyor.protocol.tags import QUEUE_PAUSED  # noqa: E402

QUEUE = "soak"
RETRIES = 2
SCRIPT = """import os, time
task = os.environ["CLEARML_TASK_ID"]
path = os.path.join({runs!r}, task)
with open(path, "a") as f:
    f.write(f"start {{time.time()}}\\n")
print(f"soak {{task}}", flush=True)
time.sleep({sleep})
while os.path.exists(os.path.join({holds!r}, task)):  # the bench holds a killed daemon's run for its successor
    time.sleep(0.1)
with open(path, "a") as f:
    f.write(f"end {{time.time()}}\\n")
"""


def rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    return psutil.Process(server.proc.pid).memory_info().rss / 2**20


def cpu_seconds(proc: psutil.Process) -> float:
    """The process's CPU time and that of the children it reaped (an executor, the task's code under it)."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """CPU seconds spent by a group of processes (servers, or daemons with all they ran) since `start`, the ones
    replaced meanwhile included up to their end. PostgreSQL's own processes are not counted."""

    def __init__(self) -> None:
        self.base: dict[int, float] = {}
        self.retired = 0.0

    def start(self, pids: list[int]) -> None:
        self.base = {pid: cpu_seconds(psutil.Process(pid)) for pid in pids}

    def retire(self, pid: int) -> None:
        """Just before the process ends."""
        self.retired += cpu_seconds(psutil.Process(pid)) - self.base.pop(pid, 0.0)

    def total(self, pids: list[int]) -> float:
        return self.retired + sum(cpu_seconds(psutil.Process(pid)) - self.base.get(pid, 0.0) for pid in pids)


def in_chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def in_parallel(work: list[Any], target: Any) -> None:  # noqa: ANN401 - any callable taking one item
    threads = [threading.Thread(target=target, args=(item,)) for item in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Soak:
    def __init__(self, root: Path, servers: list[ServerProcess], args: argparse.Namespace):
        self.root = root
        self.servers = servers
        self.args = args
        self.runs = root / "runs"
        self.runs.mkdir()
        self.holds = root / "holds"
        self.holds.mkdir()
        self.daemons: list[DaemonProcess] = []
        self.faults: list[tuple[float, str]] = []  # (seconds since the pause was lifted, what happened)
        self.victims: list[dict[str, Any]] = []
        self.rss: dict[str, list[tuple[str, float]]] = {f"server {i + 1}": [] for i in range(len(servers))}
        self.cpu = {"servers": CpuMeter(), "daemons": CpuMeter()}
        self.daemon_logs: list[Path] = []

    # --- set-up ---------------------------------------------------------------------------------------------------
    def start_daemon(self, index: int) -> DaemonProcess:
        server = self.servers[index % len(self.servers)]
        env = agent_env(server, self.root, CLEARML_WORKER_ID=f"soak-{index}")
        daemon = DaemonProcess(server, self.root / "daemons" / str(index), "--queue", QUEUE, env=env,
                               start_timeout=120)
        self.daemon_logs.append(daemon.log_path)
        return daemon

    def pids(self, group: str) -> list[int]:
        procs = [s.proc for s in self.servers] if group == "servers" else [d.proc for d in self.daemons]
        return [p.pid for p in procs if p is not None]

    def create_tasks(self) -> list[str]:
        client = self.servers[0].client()
        queue = client.call("queues.create", {"name": QUEUE})["id"]
        # Paused (force_workers:off) until every task is queued: the run then starts at once on all daemons, and
        # enqueueing does not compete with the runs for the CPU.
        client.call("queues.update", {"queue": queue, "tags": [QUEUE_PAUSED], "metadata": {
            "retries": {"key": "retries", "type": "int", "value": str(RETRIES)}}})
        script = SCRIPT.format(runs=str(self.runs), holds=str(self.holds), sleep=self.args.sleep)
        tasks: list[str] = []
        lock = threading.Lock()

        def create(part: range) -> None:
            own = self.servers[part.start % len(self.servers)].client()
            made = [create_task(own, name=f"soak-{i}", entry_point="soak.py", diff=script) for i in part]
            with lock:
                tasks.extend(made)

        step = -(-self.args.tasks // 4)
        in_parallel([range(i, min(i + step, self.args.tasks)) for i in range(0, self.args.tasks, step)], create)
        self.queue = queue
        return tasks

    def enqueue(self, tasks: list[str]) -> None:
        def send(part: tuple[int, list[str]]) -> None:
            client = self.servers[part[0] % len(self.servers)].client()
            for task in part[1]:
                client.call("tasks.enqueue", {"task": task, "queue": self.queue})

        step = -(-len(tasks) // 4)
        in_parallel(list(enumerate(in_chunks(tasks, step))), send)

    # --- faults ---------------------------------------------------------------------------------------------------
    def busy_daemon(self, avoid: set[int]) -> tuple[int, psutil.Process | None, str | None]:
        """The daemon whose executor started last (its index, that executor and its task): its run has the most
        left to do, so that the kill most likely leaves a run in flight for the restarted daemon to adopt."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = []
            for index, daemon in enumerate(self.daemons):
                if index in avoid:
                    continue
                # An executor is known by its run record: a standby executor's command line names no task.
                tasks = _recorded_runs(Path(daemon.env["CONVEYOR_AGENT_DIR"]) / "runs")
                try:
                    for child in psutil.Process(daemon.proc.pid).children():
                        if child.pid in tasks:
                            found.append((child.create_time(), index, child, tasks[child.pid]))
                except psutil.Error:
                    continue
            if found:
                _, index, child, task = max(found, key=lambda f: f[0])
                return index, child, task
            time.sleep(0.05)
        return next(i for i in range(len(self.daemons)) if i not in avoid), None, None

    def kill_daemon(self, avoid: set[int]) -> int:
        index, executor, task = self.busy_daemon(avoid)
        hold = self.holds / (task or "none")
        hold.touch()  # its code, unless already past the hold, waits until the restarted daemon has looked
        old = self.daemons[index]
        self.cpu["daemons"].retire(old.proc.pid)
        old.proc.kill()
        old.proc.wait()
        killed = time.monotonic()
        self.daemons[index] = new = self.start_daemon(index)
        adopted = task is not None and f"adopted task {task}" in new.output()
        # An executor still running now was running when the new daemon looked for leftovers: it must be adopted.
        # One that ended before needs nothing (it reported its own end).
        alive = executor is not None and executor.is_running() and executor.status() != psutil.STATUS_ZOMBIE
        hold.unlink()
        self.victims.append({"daemon": index, "task": task, "adopted": adopted, "missed": alive and not adopted,
                             "restart": time.monotonic() - killed})
        return index

    def restart_server(self, index: int) -> str:
        server = self.servers[index]
        self.rss[f"server {index + 1}"].append(("before its restart", rss_mib(server)))
        assert server.proc is not None
        self.cpu["servers"].retire(server.proc.pid)
        began = time.monotonic()
        server.stop()  # SIGTERM; SIGKILL after 10 s
        stopped = time.monotonic()
        server.start(timeout=120)
        return (f"server {index + 1} SIGTERMed: exited in {stopped - began:.1f} s, answering again "
                f"{time.monotonic() - stopped:.1f} s later")

    # --- the run --------------------------------------------------------------------------------------------------
    def finished(self) -> list[float]:
        """The end times of every finished run so far."""
        ends = []
        for path in self.runs.iterdir():
            ends += [float(line.split()[1]) for line in path.read_text().splitlines() if line.startswith("end ")]
        return ends

    def not_final(self, client: Any, tasks: list[str]) -> int:  # noqa: ANN401 - ApiClient
        left = 0
        for part in in_chunks(tasks, 1000):
            docs = client.call("tasks.get_all", {"id": part, "only_fields": ["id", "status"],
                                                 "page_size": len(part)})["tasks"]
            left += sum(1 for d in docs if d["status"] not in FINAL)
        return left

    def run(self) -> dict[str, Any]:
        for i, server in enumerate(self.servers):
            self.rss[f"server {i + 1}"].append(("after its start", rss_mib(server)))
        tasks = self.create_tasks()
        print(f"{len(tasks)} tasks created; starting {self.args.daemons} daemons", flush=True)
        for i in range(self.args.daemons):
            self.daemons.append(self.start_daemon(i))  # one by one: those started are stopped if one fails
        began = time.time()
        self.enqueue(tasks)
        print(f"enqueued in {time.time() - began:.1f} s; the queue's pause lifted", flush=True)
        for group, meter in self.cpu.items():
            meter.start(self.pids(group))
        t0 = time.time()
        self.servers[0].client().call("queues.update", {"queue": self.queue, "tags": []})
        plan = [(0.25, "daemon"), (0.5, "server"), (0.75, "daemon")]
        killed: set[int] = set()
        client = self.servers[1].client(max_retries=60, backoff_max=1.0)
        progress, last_change, done = -1, time.monotonic(), False
        while not done:
            count = len(self.finished())
            if plan and count >= plan[0][0] * len(tasks):
                kind = plan.pop(0)[1]
                at = time.time() - t0
                if kind == "daemon":
                    killed.add(self.kill_daemon(killed))
                    victim = self.victims[-1]
                    what = (f"daemon {victim['daemon']} SIGKILLed (task in flight: {victim['task'] or 'none'}), "
                            f"restarted in {victim['restart']:.1f} s")
                else:
                    what = self.restart_server(0)
                self.faults.append((at, what))
                print(f"  {at:6.0f} s, {count} finished: {what}", flush=True)
            if count != progress:
                progress, last_change = count, time.monotonic()
            if count >= len(tasks) and not plan:
                done = self.not_final(client, tasks) == 0
            if time.monotonic() - last_change > self.args.drain:
                break
            if not done:
                time.sleep(1.0)
        wall = time.time() - t0
        cpu = {group: meter.total(self.pids(group)) for group, meter in self.cpu.items()}
        for i, server in enumerate(self.servers):
            self.rss[f"server {i + 1}"].append(("after the drain", rss_mib(server)))
        return {"tasks": tasks, "t0": t0, "wall": wall, "cpu": cpu, **self.check(client, tasks)}

    # --- the checks -----------------------------------------------------------------------------------------------
    def check(self, client: Any, tasks: list[str]) -> dict[str, Any]:  # noqa: ANN401 - ApiClient
        docs: dict[str, dict[str, Any]] = {}
        for part in in_chunks(tasks, 1000):
            for doc in client.call("tasks.get_all", {"id": part, "only_fields": ["id", "status", "status_reason"],
                                                     "page_size": len(part)})["tasks"]:
                docs[doc["id"]] = doc
        counts = {"completed": 0, "duplicates": 0, "losses": 0, "stuck": 0, "rerun": 0, "log without its line": 0}
        odd: list[str] = []
        for task in tasks:
            path = self.runs / task
            lines = path.read_text().splitlines() if path.exists() else []
            starts = sum(1 for line in lines if line.startswith("start "))
            ends = sum(1 for line in lines if line.startswith("end "))
            status = docs.get(task, {}).get("status", "missing")
            counts["rerun"] += starts > 1 and ends <= 1
            if ends > 1:
                counts["duplicates"] += 1
            if status not in FINAL:
                counts["stuck"] += 1
            elif status != "completed" or ends == 0:
                counts["losses"] += 1
            elif ends == 1:
                counts["completed"] += 1
            if status != "completed" or ends != 1:
                odd.append(f"{task}: {status} ({docs.get(task, {}).get('status_reason')}), {starts} starts, "
                           f"{ends} ends")
        lock = threading.Lock()

        def read_logs(part: list[str]) -> None:
            own = self.servers[0].client(max_retries=10)
            missing = sum(1 for task in part if f"soak {task}" not in log_text(own, task))
            with lock:
                counts["log without its line"] += missing

        in_parallel(in_chunks(tasks, -(-len(tasks) // 4)), read_logs)
        return {"counts": counts, "odd": odd}


def windows(ends: list[float], t0: float, width: float) -> list[float]:
    """Finished runs per minute in each full window of `width` seconds from t0."""
    if not ends:
        return []
    full = int((max(ends) - t0) // width)
    slots = [0] * full
    for end in ends:
        slot = int((end - t0) // width)
        if slot < full:
            slots[slot] += 1
    return [n * 60 / width for n in slots]


def report(soak: Soak, result: dict[str, Any], args: argparse.Namespace) -> int:
    ends = sorted(soak.finished())
    t0, counts = result["t0"], result["counts"]
    print(f"\nmachine: {os.cpu_count()} cores; {args.daemons} daemons on 2 servers on PostgreSQL, "
          f"{len(result['tasks'])} tasks of {args.sleep} s sleep")
    for at, what in soak.faults:
        print(f"  fault at {at:.0f} s: {what}")
    for victim in soak.victims:
        if victim["task"]:
            state = ("adopted by its restarted daemon" if victim["adopted"] else
                     "still running yet NOT adopted" if victim["missed"] else
                     "its executor ended before the restarted daemon looked")
            print(f"  daemon {victim['daemon']}'s task {victim['task']}: {state}")
        else:  # the kill tested nothing: no daemon had a run in flight to leave behind
            print(f"  daemon {victim['daemon']} was killed with no run in flight found: the fault was NOT injected")
    print("  " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    for line in result["odd"][:20]:
        print(f"    {line}")
    took = (ends[-1] - t0) if ends else result["wall"]
    print(f"  wall: {result['wall']:.0f} s; {len(ends)} runs finished in {took:.0f} s: "
          f"{len(ends) / max(took, 1e-9) * 60:.0f} tasks/min on average")
    rates = windows(ends, t0, args.window)
    if rates:
        print(f"  per {args.window:.0f} s window: median {statistics.median(rates):.0f} tasks/min, "
              f"min {min(rates):.0f}, max {max(rates):.0f} over {len(rates)} windows")
    if soak.faults and ends:
        first = t0 + soak.faults[0][0]
        before = [e for e in ends if e < first]
        after = [e for e in ends if e >= first]
        print(f"  reference, before the first fault: {len(before) / max(first - t0, 1e-9) * 60:.0f} tasks/min "
              f"({len(before)} runs); from it on: {len(after) / max(ends[-1] - first, 1e-9) * 60:.0f} tasks/min")
    cpu, runs = result["cpu"], max(len(ends), 1)
    per_task = (cpu["servers"] + cpu["daemons"]) / runs
    print(f"  CPU per task: {per_task:.2f} s (servers {cpu['servers'] / runs:.2f}, daemons with their executors and "
          f"tasks {cpu['daemons'] / runs:.2f}; PostgreSQL not counted): at most "
          f"{(os.cpu_count() or 1) * 60 / max(per_task, 1e-9):.0f} tasks/min on this machine's cores")
    texts = {"servers": [s.output() for s in soak.servers],
             "daemons": [p.read_text(errors="replace") for p in soak.daemon_logs]}
    print("  in the logs: " + "; ".join(
        f"{group} {sum(t.count(' WARNING ') for t in found)} warnings, {sum(t.count(' ERROR ') for t in found)} "
        f"errors, {sum(t.count('Traceback') for t in found)} tracebacks" for group, found in texts.items()))
    for name, readings in soak.rss.items():
        print(f"  {name} RSS: " + ", ".join(f"{mib:.0f} MiB {when}" for when, mib in readings))
    faults = counts["duplicates"] + counts["losses"] + counts["stuck"] + counts["log without its line"]
    faults += sum(1 for v in soak.victims if v["missed"] or not v["task"])
    faults += len(result["tasks"]) - counts["completed"]
    print(f"\n{'all counts 0' if faults == 0 else f'{faults} faults counted'}")
    return faults



def _recorded_runs(runs: Path) -> dict[int, str]:
    """executor pid -> task, from a daemon's run records (`<agent dir>/runs/<task>.json`)."""
    found: dict[int, str] = {}
    for record in runs.glob("*.json"):
        try:
            found[int(json.loads(record.read_text())["pid"])] = record.stem
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or gone with its run
    return found

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--daemons", type=int, default=32)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each task sleeps between its markers")
    parser.add_argument("--drain", type=float, default=300, help="seconds without progress before giving up")
    parser.add_argument("--window", type=float, default=60, help="seconds per throughput window")
    parser.add_argument("--keep", action="store_true", help="keep the folder of logs and markers (printed)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-soak-"))
    soak: Soak | None = None
    try:
        with pg_database() as url:
            first = ServerProcess(root / "server-1", db=url).start()
            second = ServerProcess(root / "server-2", db=url)
            # One database, one set of credentials: the second server gets the first one's client config, with its
            # own address, so that its daemons talk to it.
            second.home.mkdir(parents=True)
            second.config_file.write_text(first.config_file.read_text().replace(first.url, second.url))
            second.start()
            soak = Soak(root, [first, second], args)
            try:
                result = soak.run()
            finally:
                for daemon in soak.daemons:
                    daemon.signal(15)
                for daemon in soak.daemons:
                    daemon.stop()
                second.stop()
                first.stop()
        faults = report(soak, result, args)
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if faults else 0)


if __name__ == "__main__":
    main()
