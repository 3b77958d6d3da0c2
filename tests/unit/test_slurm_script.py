"""Slurm batch scripts from templates: variables, defaults, task fields, shell safety, Singularity."""

from __future__ import annotations

import subprocess

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
        "#SBATCH --job-name=clearml_task_${CLEARML_TASK.id}\n"
        "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}\n"
        "echo ${CLEARML_QUEUE_NAME} ${CLEARML_QUEUE_ID} ${CLEARML_WORKER_ID} ${CLEARML_TASK.project.id}\n"
        "echo ${CLEARML_TASK.name}\n${CLEARML_PRE_SETUP}\n${CLEARML_AGENT_EXECUTE}\n${CLEARML_POST_SETUP}\n")
    assert text == ("#SBATCH --job-name=clearml_task_abc123\n#SBATCH --nodes=4\n"
                    "echo gpu_q q1 host:slurm p1\necho 'train resnet'\nmodule load cuda\n"
                    "python -m conveyor execute --id abc123 --require-queue\necho done\n")


def test_defaults_hold_colons_and_apply_only_when_the_field_is_missing() -> None:
    text = job().render("#SBATCH --time=${CLEARML_TASK.hyperparams.properties.walltime.value:01:00:00}\n"
                        "#SBATCH --nodes=${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}\n")
    assert text == "#SBATCH --time=01:00:00\n#SBATCH --nodes=4\n"


def test_a_variable_without_value_or_default_names_itself() -> None:
    named = r"gpu\.sbatch uses \$\{CLEARML_TASK\.hyperparams\.properties\.gpus\.value\}"
    with pytest.raises(TemplateError, match=named):
        job().render("#SBATCH --gpus=${CLEARML_TASK.hyperparams.properties.gpus.value}\n", "gpu.sbatch")
    with pytest.raises(TemplateError, match=r"\$\{CLEARML_SOMETHING\}"):
        job().render("echo ${CLEARML_SOMETHING}\n")


def test_comments_are_left_as_written_and_bash_variables_alone() -> None:
    template = "# ${CLEARML_TASK.hyperparams.properties.user_key.value}\n# ${CLEARML_PRE_SETUP}\necho ${SLURM_JOB_ID}\n"
    assert job(pre_setup=["a", "b"]).render(template) == template


@pytest.mark.parametrize("name", ["x'; touch /tmp/pwned; echo '", "$(touch /tmp/pwned)", "`id`", "a\nid\n",
                                  "\"; id; \"", "-rf *"])
def test_hostile_values_stay_one_word_on_one_line(name: str) -> None:
    script = job({**TASK, "name": name}).render("#SBATCH --job-name=${CLEARML_TASK.name}\n"
                                                "printf '%s|' ${CLEARML_TASK.name}\n")
    lines = script.splitlines()
    assert len(lines) == 2 and lines[0].startswith("#SBATCH --job-name=")
    out = subprocess.run(["bash", "-c", lines[1]], capture_output=True, text=True, check=True).stdout
    assert out == name.replace("\n", " ") + "|"


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
