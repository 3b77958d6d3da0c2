"""Slurm batch scripts from templates: variables, defaults, task fields, shell safety, Singularity."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conveyor.runtimes.slurm import JobState
from conveyor.runtimes.slurm_script import JobScript, TemplateError, singularity_image

TASK = {"id": "abc123", "name": "train resnet", "project": "p1",
        "hyperparams": {"properties": {"num_nodes": {"section": "properties", "name": "num_nodes", "value": "4"}}},
        "container": {"image": "nvcr.io/nvidia/pytorch:24.01-py3"}}


def job(task: dict | None = None, **kw: object) -> JobScript:
    return JobScript(task=task or TASK, queue_id="q1", queue_name="gpu_q", worker_id="host:slurm",
                     execute="python -m conveyor execute --id abc123 --require-queue", **kw)  # type: ignore[arg-type]


def test_every_documented_variable_is_filled() -> None:
    text = job(pre_setup=["module load cuda"], post_setup=["echo done"]).render(
        "#!/bin/bash\n#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}\n"
        "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}\n"
        "echo ${CLEARML_QUEUE_NAME} ${CLEARML_QUEUE_ID} ${CLEARML_WORKER_ID} ${CLEARML_TASK.project.id}\n"
        "echo ${CLEARML_TASK.name}\n${CLEARML_PRE_SETUP}\n${CLEARML_AGENT_EXECUTE}\n${CLEARML_POST_SETUP}\n")
    assert text == ("#!/bin/bash\n#SBATCH --job-name=clearml_task_abc123\n#SBATCH --nodes=4\n"
                    "CONVEYOR_VALUE_1=gpu_q\nCONVEYOR_VALUE_2=q1\nCONVEYOR_VALUE_3=host:slurm\nCONVEYOR_VALUE_4=p1\n"
                    "CONVEYOR_VALUE_5='train resnet'\n"
                    'echo "${CONVEYOR_VALUE_1}" "${CONVEYOR_VALUE_2}" "${CONVEYOR_VALUE_3}" "${CONVEYOR_VALUE_4}"\n'
                    'echo "${CONVEYOR_VALUE_5}"\nmodule load cuda\n'
                    "python -m conveyor execute --id abc123 --require-queue\necho done\n")
    out = subprocess.run(["bash", "-c", text.replace("python -m conveyor", "echo")], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[:2] == ["gpu_q q1 host:slurm p1", "train resnet"]


def test_defaults_hold_colons_and_apply_only_when_the_field_is_missing() -> None:
    text = job().render("#SBATCH --time=${CLEARML_TASK.hyperparams.properties.walltime.value:01:00:00}\n"
                        "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}\n")
    assert text == "#SBATCH --time=01:00:00\n#SBATCH --nodes=4\n"
    # a value sbatch would split, or read as another option, keeps only plain characters
    odd = {**TASK, "hyperparams": {"properties": {"num_nodes": {"value": "1\\' --output=/home/g/.bashrc -J x\\'"}}}}
    assert job(odd).render("#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}\n") == \
        "#SBATCH --nodes=1___--output=/home/g/.bashrc_-J_x__\n"


def test_a_variable_without_value_or_default_names_itself() -> None:
    named = r"gpu\.sbatch uses \$\{CLEARML_TASK\.hyperparams\.properties\.gpus\.value\}"
    with pytest.raises(TemplateError, match=named):
        job().render("#SBATCH --gpus=${CLEARML_TASK.hyperparams.properties.gpus.value}\n", "gpu.sbatch")
    with pytest.raises(TemplateError, match=r"\$\{CLEARML_SOMETHING\}"):
        job().render("echo ${CLEARML_SOMETHING}\n")


def test_comments_are_left_as_written_and_bash_variables_alone() -> None:
    template = "# ${CLEARML_TASK.hyperparams.properties.user_key.value}\n# ${CLEARML_PRE_SETUP}\necho ${SLURM_JOB_ID}\n"
    assert job(pre_setup=["a", "b"]).render(template) == template


@pytest.mark.parametrize("name", ["x'; touch {m}; echo '", "$(touch {m})", "`touch {m}`", "a\ntouch {m}\n",
                                  "\"; touch {m}; \"", "\\\"; touch {m}; \\\"", "-rf *", "${{HOME}}$((1+1))"])
def test_hostile_values_run_nothing_whatever_the_quoting_around_them(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    name = name.format(m=marker)
    script = job({**TASK, "name": name}).render(
        "#!/bin/bash\n#SBATCH --job-name=${CLEARML_TASK.name}\n"
        "printf '%s|' ${CLEARML_TASK.name}\n"  # a bare word
        'echo "name: ${CLEARML_TASK.name}"\n'  # inside the template's double quotes
        "echo 'name: ${CLEARML_TASK.name}'\n")  # inside its single quotes: the variable's name, not its value
    directive = script.splitlines()[1]
    assert directive.startswith("#SBATCH --job-name=") and " " not in directive.split("=", 1)[1]
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert not marker.exists(), "the value ran a command"
    shown = re.sub(r"[\x00-\x1f]+", " ", name)  # control characters become spaces
    assert out.startswith(f"{shown}|name: {shown}\n")


def test_singularity_mode_runs_the_command_in_the_image() -> None:
    image = singularity_image(TASK["container"]["image"])
    assert image == "docker://nvcr.io/nvidia/pytorch:24.01-py3"
    assert singularity_image("shub://repo/hello-world") == "shub://repo/hello-world"
    plain = job(singularity_image=image).render("${CLEARML_AGENT_EXECUTE}\n")
    assert plain == ("singularity exec docker://nvcr.io/nvidia/pytorch:24.01-py3 "
                     "python -m conveyor execute --id abc123 --require-queue\n")
    # the docs' form: the template writes `singularity exec [args]`, the glue adds the image
    docs = job(singularity_image=image).render("srun singularity exec --uts ${CLEARML_AGENT_EXECUTE}\n")
    assert docs == ("srun singularity exec --uts docker://nvcr.io/nvidia/pytorch:24.01-py3 "
                    "python -m conveyor execute --id abc123 --require-queue\n")


def test_how_slurm_ended_a_job_reads() -> None:
    assert JobState("7", "TIMEOUT", "TimeLimit", exit_code="0:0", elapsed="00:05:02",
                    time_limit="00:05:00").describe_end() == "slurm: TIMEOUT after 00:05:00"
    assert JobState("7", "OUT_OF_MEMORY", "", exit_code="0:125", elapsed="00:00:09").describe_end() == \
        "slurm: OUT_OF_MEMORY after 00:00:09 (exit code 0:125)"
    assert JobState("7", "FAILED", "NonZeroExitCode", exit_code="3:0").exit_status == 3
    assert JobState("7", "CANCELLED", exit_code="0:15").exit_status == 128 + 15
    assert not JobState("7", "COMPLETING").ended and JobState("7", "NODE_FAIL").ended
