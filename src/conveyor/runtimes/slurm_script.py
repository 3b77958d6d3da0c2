"""A Slurm batch script from a queue's template, as the ClearML docs write them.

A template is a bash script with `${CLEARML_...}` variables, each optionally with a default after a colon:
`${CLEARML_QUEUE_NAME}`, `${CLEARML_QUEUE_ID}`, `${CLEARML_WORKER_ID}`, any task field by path
(`${CLEARML_TASK.hyperparams.properties.num_nodes.value:1}`, `${CLEARML_TASK.project.id}`), and the three pieces of
code the glue writes: `${CLEARML_PRE_SETUP}`, `${CLEARML_AGENT_EXECUTE}`, `${CLEARML_POST_SETUP}`.

Every value that comes from the task or the queue is made safe before it is written. In an `#SBATCH` line, which
sbatch parses itself (quotes and backslashes its own way), a value keeps only the characters of plain option values
(letters, digits, `_.:,=/@+%-`); any other becomes `_`, so a property `2 --output=~/.bashrc` or a name with a newline
cannot add an option or a line. In shell lines a value is never inlined: it becomes `"${CONVEYOR_VALUE_1}"`, a
variable set once, shell-quoted, after the `#SBATCH` lines; whatever the template's quoting around it, a task named
`x'; rm -rf ~` or `$(…)` stays text. Other `${...}` (bash's own variables, `${SLURM_JOB_ID}`) are left alone, and so
are comment lines other than `#SBATCH` directives (the docs' template lists the variables in comments).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import TaskFailure

# ${CLEARML_NAME} or ${CLEARML_TASK.a.b.c}, with an optional default after the first colon (which may hold colons:
# ${CLEARML_TASK.hyperparams.properties.walltime.value:01:00:00})
VARIABLE = re.compile(r"\$\{(CLEARML_[A-Z0-9_]+(?:\.[A-Za-z0-9_\-.]+)?)(?::([^}]*))?\}")
CODE_VARIABLES = ("CLEARML_PRE_SETUP", "CLEARML_AGENT_EXECUTE", "CLEARML_POST_SETUP")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9_.:,=/@+%-]")  # what an #SBATCH option value may not hold
# `singularity exec [args] ${CLEARML_AGENT_EXECUTE}` in the template: the glue adds only the image
_RUNS_SINGULARITY = re.compile(r"\b(?:singularity|apptainer)\s+exec\b[^\n]*\$\{CLEARML_AGENT_EXECUTE")


class TemplateError(TaskFailure):
    """The template cannot be filled for this task: the task fails with this reason; the glue goes on."""


def shell_word(value: str) -> str:
    """`value` as one bash word on one line."""
    return shlex.quote(_CONTROL.sub(" ", value))


@dataclass
class JobScript:
    """What fills a template for one task."""

    task: Mapping[str, Any]
    queue_id: str
    queue_name: str
    worker_id: str
    execute: str  # the `conveyor execute` command line, already shell code
    pre_setup: list[str] = field(default_factory=list)  # shell lines
    post_setup: list[str] = field(default_factory=list)
    singularity_image: str | None = None  # --singularity-mode: the image the command runs in

    def render(self, template: str, template_name: str = "the template") -> str:
        """The batch script. Raises TemplateError naming the first variable with no value and no default."""
        code = {"CLEARML_PRE_SETUP": "\n".join(self.pre_setup), "CLEARML_POST_SETUP": "\n".join(self.post_setup),
                "CLEARML_AGENT_EXECUTE": self._execute(template)}
        values: list[str] = []  # the shell lines' values, set as CONVEYOR_VALUE_<n> after the #SBATCH lines

        def value_of(match: re.Match[str]) -> str | None:
            name, default = match.group(1), match.group(2)
            value = self._value(name)
            if value is None:
                if default is None:
                    raise TemplateError(
                        f"the Slurm template {template_name} uses ${{{name}}}, which has no value for this task "
                        f"and no default: write ${{{name}:DEFAULT}} or set it on the task")
                value = default
            return value

        def in_directive(match: re.Match[str]) -> str:
            if match.group(1) in code:
                return ""  # code in an #SBATCH line: nothing sbatch could use
            return _NOT_PLAIN.sub("_", value_of(match) or "")

        def in_shell(match: re.Match[str]) -> str:
            if match.group(1) in code:
                return code[match.group(1)]
            values.append(value_of(match) or "")
            return f'"${{CONVEYOR_VALUE_{len(values)}}}"'

        lines = []
        for line in template.splitlines(keepends=True):
            if _is_directive(line):
                lines.append(VARIABLE.sub(in_directive, line))
            elif _is_comment(line):
                lines.append(line)
            else:
                lines.append(VARIABLE.sub(in_shell, line))
        if values:  # before the first command: after the shebang, the comments and the #SBATCH lines
            first = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")),
                         len(lines))
            setting = "".join(f"CONVEYOR_VALUE_{i}={shell_word(value)}\n" for i, value in enumerate(values, 1))
            if first and not lines[first - 1].endswith("\n"):
                lines[first - 1] += "\n"
            lines.insert(first, setting)
        return "".join(lines)

    def _execute(self, template: str) -> str:
        if self.singularity_image is None:
            return self.execute
        image = shell_word(self.singularity_image)
        if _RUNS_SINGULARITY.search(template):  # `singularity exec --uts ${CLEARML_AGENT_EXECUTE}`
            return f"{image} {self.execute}"
        return f"singularity exec {image} {self.execute}"

    def _value(self, name: str) -> str | None:
        simple = {"CLEARML_QUEUE_NAME": self.queue_name, "CLEARML_QUEUE_ID": self.queue_id,
                  "CLEARML_WORKER_ID": self.worker_id}
        if name in simple:
            return simple[name]
        head, _, path = name.partition(".")
        if head != "CLEARML_TASK" or not path:
            return None
        return task_field(self.task, path)


def _is_directive(line: str) -> bool:
    return line.lstrip().startswith("#SBATCH")


def _is_comment(line: str) -> bool:
    """A bash comment that is not an #SBATCH directive: documentation (the docs' template lists the variables
    there), left as it is."""
    return line.lstrip().startswith("#") and not _is_directive(line)


def task_field(task: Mapping[str, Any], path: str) -> str | None:
    """A task field by dotted path, as text; None when the task has no such field (or it is null). `project.id`
    reads the task's project id, which the server answers as a plain string."""
    value: Any = task
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(value, str) and part == "id" and i == len(parts) - 1:
            break
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def singularity_image(image: str) -> str:
    """A container image as Singularity names it: `docker://...`, `shub://...`, a local `.sif` file kept as is."""
    if "://" in image or image.endswith((".sif", ".simg")) or image.startswith("/"):
        return image
    return f"docker://{image}"
