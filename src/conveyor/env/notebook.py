"""A Jupyter notebook as the task's entry point: its code cells become a plain Python script that the task's own
interpreter runs, so its output streams to the log line by line and nothing beyond the task's requirements is
needed (the reference converts with nbconvert and adds nbconvert and ipython to the requirements).

IPython syntax is kept where a script can do the same: `!cmd` lines and `%%bash`/`%%sh` cells run through the shell,
`%pip`/`%conda`-style installs are left to the task's requirements (the environment is built before the run), and
other magics (`%matplotlib inline`, `%%time`...) are commented out, each listed in one log line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conveyor.errors import TaskFailure
from conveyor.progress import Log

SUFFIX = ".ipynb"
_SHELL_CELLS = {"bash", "sh", "script bash", "script sh"}
_LINE_MAGIC = re.compile(r"^(\s*)%(?!%)(\S+)(.*)$")
_SHELL_LINE = re.compile(r"^(\s*)!(.*)$")
_ASSIGNED_SHELL = re.compile(r"^(\s*[A-Za-z_][A-Za-z0-9_]*\s*=\s*)!(.*)$")  # files = !ls


class NotebookError(TaskFailure):
    """The notebook cannot be read; the message says why."""


def is_notebook(entry: str) -> bool:
    return entry.lower().endswith(SUFFIX)


def convert(notebook: Path, log: Log) -> Path:
    """Write the notebook's code as `<name>.py` beside it (the task's folder, so relative paths still work); return
    that path."""
    try:
        doc = json.loads(notebook.read_text(encoding="utf-8"))
        cells = doc["cells"] if isinstance(doc, dict) else None
        if not isinstance(cells, list):
            raise ValueError("no list of cells")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotebookError(f"{notebook.name} is not a readable Jupyter notebook ({exc})") from None
    out = ["# converted by conveyor from " + notebook.name, "import subprocess as __conveyor_subprocess", ""]
    skipped: list[str] = []
    number = 0
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        number += 1
        source = cell.get("source") or ""
        text = "".join(source) if isinstance(source, list) else str(source)
        out.append(f"# --- cell {number}")
        out.extend(_convert_cell(text, skipped))
        out.append("")
    target = notebook.with_name(notebook.name[: -len(SUFFIX)] + ".py")
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    log(f"notebook: converted {number} code cells of {notebook.name} to {target.name}")
    if skipped:
        log(f"notebook: IPython magics left out (not Python): {', '.join(dict.fromkeys(skipped))}")
    return target


def _convert_cell(text: str, skipped: list[str]) -> list[str]:
    lines = text.splitlines()
    if lines and lines[0].startswith("%%"):
        magic = lines[0][2:].strip()
        body = "\n".join(lines[1:])
        if magic in _SHELL_CELLS:
            shell = "/bin/sh" if magic.endswith("sh") and not magic.endswith("bash") else "/bin/bash"
            return [f"__conveyor_subprocess.run({body!r}, shell=True, executable={shell!r})"]
        skipped.append("%%" + magic.split()[0] if magic else "%%")
        if magic.split()[0] in ("time", "timeit", "capture"):  # cell magics that only wrap Python: keep the code
            return lines[1:]
        return ["# " + line for line in lines]
    converted = []
    for line in lines:
        assigned = _ASSIGNED_SHELL.match(line)
        shell_line = _SHELL_LINE.match(line)
        line_magic = _LINE_MAGIC.match(line)
        if assigned:
            converted.append(f"{assigned.group(1)}__conveyor_subprocess.run({assigned.group(2).strip()!r}, shell=True, "
                             "capture_output=True, text=True).stdout.splitlines()")
        elif shell_line:
            converted.append(f"{shell_line.group(1)}__conveyor_subprocess.run({shell_line.group(2).strip()!r}, "
                             "shell=True)")
        elif line_magic:
            skipped.append("%" + line_magic.group(2))
            converted.append(f"{line_magic.group(1)}pass  # {line.strip()}")
        else:
            converted.append(line)
    return converted
