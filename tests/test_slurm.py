"""The Slurm glue (`conveyor slurm`) against a real single-node Slurm (`.ci/slurm.sh`): templates, the task's life
while its job waits and runs, Slurm's faults, restarts, limits and hostile input."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import gluekit
from agentkit import DaemonProcess, agent_env, log_text, wait_final, wait_for_line
from conftest import ServerProcess
from gluekit import no_glue_left  # noqa: F401 - the fixture
from slurmkit import slurm  # noqa: F401 - the fixture

# The docs' example template, unchanged (ClearML docs, "Slurm")
DOCS_TEMPLATE = """#!/bin/bash
# available template variables (default value separator ":")
# ${CLEARML_QUEUE_NAME}
# ${CLEARML_QUEUE_ID}
# ${CLEARML_WORKER_ID}.
# complex template variables  (default value separator ":")
# ${CLEARML_TASK.id}
# ${CLEARML_TASK.name}
# ${CLEARML_TASK.project.id}
# ${CLEARML_TASK.hyperparams.properties.user_key.value}


# example
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}       # Job name DO NOT CHANGE
#SBATCH --ntasks=1                    # Run on a single CPU
# #SBATCH --mem=1mb                   # Job memory request
# #SBATCH --time=00:05:00             # Time limit hrs:min:sec
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
#SBATCH --partition debug
#SBATCH --cpus-per-task=1
#SBATCH --priority=5
#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}


${CLEARML_PRE_SETUP}

echo whoami $(whoami)

${CLEARML_AGENT_EXECUTE}

${CLEARML_POST_SETUP}
"""


def start_glue(server: ServerProcess, tmp_path: Path, templates: dict[str, str], *args: str,
               **env: str) -> DaemonProcess:
    """`conveyor slurm` serving one queue per template (created), templates written under tmp_path. Its worker name
    is the test's, so that no glue adopts another test's jobs."""
    files: list[str] = []
    for queue, text in templates.items():
        path = tmp_path / f"{queue}.sbatch"
        path.write_text(text)
        files.append(str(path))
    environ = agent_env(server, tmp_path, CLEARML_AGENT__AGENT__SLURM__WORK_DIR=str(tmp_path / "slurm-work"),
                        CLEARML_AGENT__AGENT__SLURM__PENDING_QUEUE=f"slurm_pending_{tmp_path.name}"[-60:],
                        CLEARML_WORKER_NAME=f"glue{time.monotonic_ns() % 10**9}", **env)
    return gluekit.start(server, tmp_path, "slurm", "--template-files", *files, "--queue", *templates,
                         "--create-queue", *args, env=environ)


def task_in(server: ServerProcess, tmp_path: Path, queue: str, code: str = "print('hello from slurm')\n",
            **fields: Any) -> str:
    return gluekit.task_in(server, tmp_path, queue, code, **fields)


def job_of(client: Any, task: str, timeout: float = 60) -> str:
    return gluekit.job_property(client, task, "slurm-job-id", timeout)


def test_the_docs_template_runs_a_task_to_completed_with_its_log(slurm: None, sqlite_server: ServerProcess,
                                                                 tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": DOCS_TEMPLATE})
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "slurm_q")
    doc = wait_final(client, task, timeout=180)
    assert doc["status"] == "completed", (doc.get("status_reason"), log_text(client, task), glue.output())
    assert "hello from slurm" in log_text(client, task)
    job = job_of(client, task)
    out = (tmp_path / "slurm-work" / f"task-{task}-{job}.log").read_text()
    assert "whoami root" in out
    glue.stop()


SIMPLE = """#!/bin/bash
#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}
#SBATCH --output=task-${CLEARML_TASK.id}-%j.log
#SBATCH --cpus-per-task=${CLEARML_TASK.hyperparams.properties.cpus.value:1}
echo "queue=${CLEARML_QUEUE_NAME} cpus=$SLURM_CPUS_PER_TASK template=@T@"
${CLEARML_AGENT_EXECUTE}
"""


def simple(name: str) -> str:
    return SIMPLE.replace("@T@", name)


def hold_the_node() -> str:
    """A job holding both CPUs of the node, so that the next one waits for Resources."""
    out = subprocess.run(["sbatch", "--parsable", "-c", "2", "--comment", "conveyor-test-blocker", "--output",
                          "/dev/null", "--wrap", "sleep 300"], capture_output=True, text=True, check=True)
    job = out.stdout.strip()
    deadline = time.time() + 30
    while squeue_state(job) != "RUNNING":
        assert time.time() < deadline, f"the blocker job {job} never ran"
        time.sleep(0.2)
    return job


def squeue_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def final_state(job: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")
        if state and state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not end")


def wait_message(client: Any, task: str, text: str, timeout: float = 60) -> dict[str, Any]:
    return gluekit.wait_task(client, task, text, timeout)


def test_two_queues_use_their_own_templates_and_properties_change_the_sbatch_lines(
        slurm: None, sqlite_server: ServerProcess, tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, {"gpu_q": simple("gpu"), "cpu_q": simple("cpu")})
    client = sqlite_server.client()
    on_gpu = task_in(sqlite_server, tmp_path, "gpu_q")
    # a user property edited in the UI: the next run's #SBATCH --cpus-per-task
    on_cpu = task_in(sqlite_server, tmp_path, "cpu_q", hyperparams={"properties": {"cpus": {
        "section": "properties", "name": "cpus", "value": "2", "type": "", "description": ""}}})
    for task, queue, template, cpus in ((on_gpu, "gpu_q", "gpu", 1), (on_cpu, "cpu_q", "cpu", 2)):
        doc = wait_final(client, task, timeout=180)
        assert doc["status"] == "completed", (doc.get("status_reason"), glue.output())
        out = (tmp_path / "slurm-work" / f"task-{task}-{job_of(client, task)}.log").read_text()
        assert f"queue={queue} cpus={cpus} template={template}" in out
    glue.stop()


def test_a_pending_job_shows_slurms_reason_and_an_abort_cancels_it(slurm: None, sqlite_server: ServerProcess,
                                                                    tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": simple("x")})
    client = sqlite_server.client()
    blocker = hold_the_node()
    try:
        task = task_in(sqlite_server, tmp_path, "slurm_q")
        job = job_of(client, task)
        doc = wait_message(client, task, f"slurm job {job} pending: Resources")
        assert doc["status"] == "queued"
        shown = subprocess.run([sys.executable, "-m", "conveyor", "task", "show", task], capture_output=True, text=True,
                               env=sqlite_server.env()).stdout
        assert f"slurm job {job} pending: Resources" in shown
        client.call("tasks.stop", {"task": task})
        assert final_state(job) == "CANCELLED"
        wait_for_line(client, task, "the job was cancelled", timeout=10)
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
        assert doc["status"] == "stopped"
        # a second task dequeued while its job waits: its job is cancelled too, and it never runs
        other = task_in(sqlite_server, tmp_path, "slurm_q")
        other_job = job_of(client, other)
        wait_message(client, other, "pending: Resources")
        client.call("tasks.dequeue", {"task": other})
        assert final_state(other_job) == "CANCELLED"
        time.sleep(1)
        assert client.call("tasks.get_by_id", {"task": other})["task"]["status"] == "created"
        assert "worker started execution" not in str(client.call("tasks.get_by_id", {"task": other})["task"])
    finally:
        subprocess.run(["scancel", blocker])
    glue.stop()


def test_abort_while_running_stops_the_task_and_ends_its_job(slurm: None, sqlite_server: ServerProcess,
                                                             tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": simple("x")})
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "slurm_q", "import time\nprint('running', flush=True)\ntime.sleep(300)\n")
    wait_for_line(client, task, "running")
    job = job_of(client, task)
    workers = {w["id"]: w for w in client.call("workers.get_all", {})["workers"]}
    sub = next((w for w in workers.values() if w["id"].endswith(f":job-{job}")), workers)
    assert (sub.get("task") or {}).get("id") == task, workers
    client.call("tasks.stop", {"task": task})
    doc = wait_final(client, task, timeout=60)
    assert doc["status"] == "stopped"
    assert final_state(job) in ("COMPLETED", "FAILED")
    time.sleep(2)  # the glue's look at the ended job leaves the status alone
    assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "stopped"
    glue.stop()


def test_slurm_killing_the_job_fails_the_task_with_slurms_state(slurm: None, sqlite_server: ServerProcess,
                                                                tmp_path: Path) -> None:
    """An admin's scancel while the task runs; sbatch refusing the script; a template variable with no value."""
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": simple("x"),
                                                "bad_q": "#!/bin/bash\n#SBATCH --partition=nosuchpartition\n"
                                                         "${CLEARML_AGENT_EXECUTE}\n",
                                                "odd_q": "#!/bin/bash\n#SBATCH --comment=${CLEARML_TASK.nothing}\n"
                                                         "${CLEARML_AGENT_EXECUTE}\n"})
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "slurm_q", "import time\nprint('running', flush=True)\ntime.sleep(300)\n")
    wait_for_line(client, task, "running")
    job = job_of(client, task)
    subprocess.run(["scancel", job], check=True)
    doc = wait_final(client, task, timeout=60)
    time.sleep(3)
    doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "failed" and doc["status_reason"].startswith("slurm: CANCELLED"), doc["status_reason"]

    refused = task_in(sqlite_server, tmp_path, "bad_q")
    doc = wait_final(client, refused, timeout=60)
    assert doc["status"] == "failed"
    assert doc["status_reason"].startswith("sbatch refused the job:") and "partition" in doc["status_reason"]

    odd = task_in(sqlite_server, tmp_path, "odd_q")
    doc = wait_final(client, odd, timeout=60)
    assert doc["status"] == "failed" and "${CLEARML_TASK.nothing}" in doc["status_reason"], doc["status_reason"]
    assert glue.proc.poll() is None  # the glue goes on
    glue.stop()


def counting_code(runs: Path, seconds: float = 0) -> str:
    """A task that notes each run of itself in `runs`."""
    return (f"import os, time\nopen({str(runs)!r}, 'a').write(os.environ['CLEARML_TASK_ID'] + '\\n')\n"
            f"time.sleep({seconds})\nprint('counted', flush=True)\n")


def our_jobs(tmp_path: Path) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True).stdout
    return [line.split("|")[0] for line in out.splitlines() if "|conveyor:" in line]


def test_a_glue_killed_and_restarted_runs_each_of_10_tasks_exactly_once(slurm: None, sqlite_server: ServerProcess,
                                                                         tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": simple("x")})
    client = sqlite_server.client()
    tasks = [task_in(sqlite_server, tmp_path, "slurm_q", counting_code(runs, 1)) for _ in range(10)]
    deadline = time.time() + 60
    while sum(1 for t in tasks if client.call("tasks.get_by_id", {"task": t})["task"]["status"] != "queued"
              or "slurm job" in (client.call("tasks.get_by_id", {"task": t})["task"].get("status_message") or "")) < 4:
        assert time.time() < deadline
        time.sleep(0.1)
    glue.proc.send_signal(signal.SIGKILL)  # in the middle: some jobs done, some running, some pending, some queued
    glue.proc.wait()
    glue = gluekit.restart(glue, sqlite_server, tmp_path)
    for task in tasks:
        doc = wait_final(client, task, timeout=240)
        assert doc["status"] == "completed", (doc.get("status_reason"), glue.output())
    counted = runs.read_text().split()
    assert sorted(counted) == sorted(tasks), "each task runs exactly once"
    assert "adopted task" in glue.output(), glue.output()
    glue.stop()


def test_max_jobs_2_keeps_at_most_2_jobs_and_runs_all_5(slurm: None, sqlite_server: ServerProcess,
                                                         tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": simple("x")}, "--max-jobs", "2")
    client = sqlite_server.client()
    tasks = [task_in(sqlite_server, tmp_path, "slurm_q", counting_code(runs, 2)) for _ in range(5)]
    most = 0
    deadline = time.time() + 240
    while not all(client.call("tasks.get_by_id", {"task": t})["task"]["status"] in ("completed", "failed")
                  for t in tasks):
        assert time.time() < deadline, glue.output()
        most = max(most, len(our_jobs(tmp_path)))
        time.sleep(0.2)
    assert most == 2, f"at most 2 jobs at once, and 2 were reached: {most}"
    assert all(client.call("tasks.get_by_id", {"task": t})["task"]["status"] == "completed" for t in tasks)
    assert sorted(runs.read_text().split()) == sorted(tasks)
    glue.stop()


HOSTILE = ["x'; touch {marker}; echo '", "$(touch {marker})", "`touch {marker}`", "a\ntouch {marker}\n",
           "\"; touch {marker}; \""]


def test_hostile_task_names_inject_nothing(slurm: None, sqlite_server: ServerProcess, tmp_path: Path) -> None:
    template = ("#!/bin/bash\n#SBATCH --job-name=${CLEARML_TASK.name}\n#SBATCH --output=task-${CLEARML_TASK.id}.log\n"
                "echo name: ${CLEARML_TASK.name}\n${CLEARML_AGENT_EXECUTE}\n")
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": template})
    client = sqlite_server.client()
    marker = tmp_path / "pwned"
    tasks = [task_in(sqlite_server, tmp_path, "slurm_q", name=name.format(marker=marker)) for name in HOSTILE]
    for task in tasks:
        doc = wait_final(client, task, timeout=120)
        assert doc["status"] == "completed", (doc["name"], doc.get("status_reason"), glue.output())
    assert not marker.exists(), "a task name ran a command"
    out = (tmp_path / "slurm-work" / f"task-{tasks[0]}.log").read_text()
    assert f"name: x'; touch {marker}; echo '" in out
    glue.stop()


def test_every_rank_runs_and_only_rank_0_reports(slurm: None, sqlite_server: ServerProcess, tmp_path: Path) -> None:
    template = ("#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --cpus-per-task=1\n"
                "#SBATCH --output=task-${CLEARML_TASK.id}.log\nsrun ${CLEARML_AGENT_EXECUTE}\n")
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": template})
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "slurm_q",
                   "import os, time\ntime.sleep(1)\nprint('hello from rank', os.environ['SLURM_PROCID'], flush=True)\n")
    doc = wait_final(client, task, timeout=180)
    assert doc["status"] == "completed", (doc.get("status_reason"), glue.output())
    time.sleep(1)
    log = log_text(client, task)
    assert "RANK 1: hello from rank 1" in log, log
    assert "hello from rank 0" in log
    assert "RANK 0" not in log
    glue.stop()


# Slurm's smallest time limit is a minute; the class of a TIMEOUT is also in tests/unit/test_failure_classes.py
@pytest.mark.slow
def test_a_job_past_its_time_limit_fails_the_task_with_timeout(slurm: None, sqlite_server: ServerProcess,
                                                               tmp_path: Path) -> None:
    """Slurm's limits are whole minutes and it checks them every 30 s: this takes 60 to 90 s."""
    template = "#!/bin/bash\n#SBATCH --time=1\n${CLEARML_AGENT_EXECUTE}\n"
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": template})
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "slurm_q", "import time\nprint('running', flush=True)\ntime.sleep(600)\n")
    wait_for_line(client, task, "running")
    doc = wait_final(client, task, timeout=150)
    deadline = time.time() + 10
    while doc["status"] != "failed" and time.time() < deadline:
        time.sleep(0.2)
        doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "failed" and doc["status_reason"] == "slurm: TIMEOUT after 00:01:00", doc["status_reason"]
    glue.stop()


def test_a_job_slurm_ended_while_the_glue_was_down_fails_its_task_at_restart(
        slurm: None, sqlite_server: ServerProcess, tmp_path: Path) -> None:
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": simple("x")})
    client = sqlite_server.client()
    task = task_in(sqlite_server, tmp_path, "slurm_q", "import time\nprint('running', flush=True)\ntime.sleep(300)\n")
    wait_for_line(client, task, "running")
    job = job_of(client, task)
    status = subprocess.run([sys.executable, "-m", "conveyor", "slurm", "--status"], capture_output=True, text=True,
                            env=glue.env).stdout
    assert task in status and job in status and "RUNNING" in status, status
    glue.proc.send_signal(signal.SIGKILL)
    glue.proc.wait()
    subprocess.run(["scancel", job], check=True)
    assert final_state(job) == "CANCELLED"
    time.sleep(2)  # the executor has ended and left the status to the glue
    assert client.call("tasks.get_by_id", {"task": task})["task"]["status"] == "in_progress"
    glue = gluekit.restart(glue, sqlite_server, tmp_path)
    deadline = time.time() + 30
    while (doc := client.call("tasks.get_by_id", {"task": task})["task"])["status"] == "in_progress":
        assert time.time() < deadline, glue.output()
        time.sleep(0.2)
    assert doc["status"] == "failed" and doc["status_reason"].startswith("slurm: CANCELLED"), doc["status_reason"]
    glue.stop()


@pytest.mark.slow  # the limit itself is also held in test_max_jobs_2_keeps_at_most_2_jobs_and_runs_all_5
def test_a_queue_limit_from_the_config_file(slurm: None, sqlite_server: ServerProcess, tmp_path: Path) -> None:
    """agent.slurm.queues.<name>.max_jobs: one job at a time from `one_q`, while `any_q` takes more."""
    conf = tmp_path / "glue.conf"
    conf.write_text(sqlite_server.config_file.read_text() + "\nagent.slurm.queues { one_q { max_jobs: 1 } }\n")
    glue = start_glue(sqlite_server, tmp_path, {"one_q": simple("one"), "any_q": simple("any")},
                      CLEARML_CONFIG_FILE=str(conf))
    client = sqlite_server.client()
    slow = "import time\nprint('running', flush=True)\ntime.sleep({})\n"
    limited = [task_in(sqlite_server, tmp_path, "one_q", slow.format(12)) for _ in range(2)]
    free = [task_in(sqlite_server, tmp_path, "any_q", slow.format(2)) for _ in range(2)]
    wait_for_line(client, free[0], "running")
    wait_for_line(client, free[1], "running")
    docs = [client.call("tasks.get_by_id", {"task": t})["task"] for t in limited]
    assert sorted(bool("slurm-job-id" in d.get("hyperparams", {}).get("properties", {})) for d in docs) == \
        [False, True], "one job from one_q at a time"
    deadline = time.time() + 5  # the glue notes its limit on the queue at its next look
    while not client.call("queues.get_all", {"name": "^one_q$"})["queues"][0].get("metadata"):
        assert time.time() < deadline, "the glue never noted its limit on one_q"
        time.sleep(0.2)
    listed = subprocess.run([sys.executable, "-m", "conveyor", "queue", "list"], capture_output=True, text=True,
                            env=sqlite_server.env()).stdout
    one_q = next(line for line in listed.splitlines() if line.startswith("one_q"))
    assert "1 of 1 jobs running, not pulling" in one_q, listed
    for task in limited + free:
        assert wait_final(client, task, timeout=120)["status"] == "completed"
    glue.stop()


def test_a_job_that_starts_after_its_task_was_aborted_runs_nothing(slurm: None, sqlite_server: ServerProcess,
                                                                   tmp_path: Path) -> None:
    """The job is already running its script (so the glue leaves it be) when the task is aborted: the executor's
    --require-queue refuses the task, which stays stopped."""
    runs = tmp_path / "runs.txt"
    template = ("#!/bin/bash\n#SBATCH --output=task-${CLEARML_TASK.id}.log\n"
                "while [ ! -e ${CLEARML_TASK.name} ]; do sleep 0.2; done\n${CLEARML_AGENT_EXECUTE}\n")
    glue = start_glue(sqlite_server, tmp_path, {"slurm_q": template})
    client = sqlite_server.client()
    go = tmp_path / "go"
    task = task_in(sqlite_server, tmp_path, "slurm_q", counting_code(runs), name=str(go))
    job = job_of(client, task)
    wait_message(client, task, f"slurm job {job} running on")
    client.call("tasks.stop", {"task": task})
    go.touch()
    deadline = time.time() + 30
    while "refuses to run it" not in log_text(client, task):
        assert time.time() < deadline, log_text(client, task)
        time.sleep(0.2)
    time.sleep(2)
    doc = client.call("tasks.get_by_id", {"task": task})["task"]
    assert doc["status"] == "stopped"
    assert not runs.exists(), "the aborted task ran"
    glue.stop()
