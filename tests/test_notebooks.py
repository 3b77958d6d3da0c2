"""Notebooks: the docs' Google Colab flow in a real Jupyter kernel (executed by `jupyter nbconvert --execute`), and a
task whose entry point is an .ipynb file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentkit import agent_env, log_text, make_repo
from conftest import ServerProcess

ANALYSIS = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# An analysis"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["%matplotlib inline\n", "import six\n", "values = [1, 2, 3]\n"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["!echo shell says hi\n", "files = !ls\n", "print('cell 2 sum', sum(values), 'six', six.__version__,"
                    " 'analysis.ipynb' in files)\n"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["%%bash\n", "echo from a bash cell\n"]},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def code_cell(source: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}


def colab_notebook(server: ServerProcess, bare: Path) -> dict:
    key, secret = server.credentials()
    wait = """
import time
from clearml import Task
def wait(task_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(Task.get_task(task_id=task_id).get_status())
        if status in ("completed", "failed", "stopped"):
            return status
        time.sleep(0.5)
    return "timed out"
"""
    cells = [
        # the docs' Colab flow: credentials in CLEARML_API_* variables, no clearml.conf
        code_cell(f"import os\nos.environ['CLEARML_API_HOST'] = {server.url!r}\n"
                  f"os.environ['CLEARML_WEB_HOST'] = {server.url!r}\nos.environ['CLEARML_FILES_HOST'] = "
                  f"{server.url + '/files'!r}\nos.environ['CLEARML_API_ACCESS_KEY'] = {key!r}\n"
                  f"os.environ['CLEARML_API_SECRET_KEY'] = {secret!r}\n"),
        code_cell("!conveyor daemon --queue default --detached"),
        code_cell(wait),
        code_cell(f"train = Task.create(project_name='colab', task_name='train', repo={'file://' + str(bare)!r}, "
                  "branch='main', script='train.py', add_task_init_call=False)\n"
                  "Task.enqueue(train, queue_name='default')\nprint('RESULT train', wait(train.id))"),
        code_cell(f"import subprocess\nnb = subprocess.run(['conveyor', 'task', 'create', '--name', 'analysis', "
                  f"'--repo', {'file://' + str(bare)!r}, '--branch', 'main', '--script', 'analysis.ipynb', "
                  "'--queue', 'default'], capture_output=True, text=True, check=True).stdout.split()[-1]\n"
                  "print('NOTEBOOK', nb)\nprint('RESULT notebook', wait(nb))"),
        code_cell("!conveyor daemon --queue default --stop"),
        code_cell("print('kernel still usable', 6 * 7)"),
    ]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


def outputs(executed: dict) -> str:
    text = []
    for cell in executed["cells"]:
        for out in cell.get("outputs", []):
            text.append("".join(out.get("text", "")) if "text" in out else json.dumps(out))
    return "".join(text)


def test_colab_flow_in_a_jupyter_kernel(sqlite_server: ServerProcess, tmp_path: Path) -> None:
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists():
        pytest.fail("jupyter (nbconvert, ipykernel) is part of the test extras")
    _, bare = make_repo(tmp_path / "repos", {"train.py": "print('trained in colab')\n",
                                             "analysis.ipynb": json.dumps(ANALYSIS),
                                             "requirements.txt": "six==1.16.0\n"})
    book = tmp_path / "colab.ipynb"
    book.write_text(json.dumps(colab_notebook(sqlite_server, bare)))
    home = tmp_path / "colab-home"  # no clearml.conf anywhere: the notebook's variables are the configuration
    home.mkdir()
    env = {k: v for k, v in agent_env(sqlite_server, tmp_path / "agent").items()
           if not k.startswith(("CLEARML_API", "CLEARML_CONFIG"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               JUPYTER_PLATFORM_DIRS="1")
    done = subprocess.run([str(jupyter), "nbconvert", "--to", "notebook", "--execute", "--output", "executed",
                           "--ExecutePreprocessor.timeout=600", str(book)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    text = outputs(json.loads((tmp_path / "executed.ipynb").read_text()))
    assert "conveyor agent started in the background" in text, text
    assert "RESULT train completed" in text, text
    assert "RESULT notebook completed" in text, text
    assert "kernel still usable 42" in text
    client = sqlite_server.client()
    notebook_task = next(line.split()[1] for line in text.splitlines() if line.startswith("NOTEBOOK "))
    log = log_text(client, notebook_task)
    assert "shell says hi" in log and "cell 2 sum 6 six 1.16.0 True" in log and "from a bash cell" in log, log
    assert "notebook: converted 3 code cells of analysis.ipynb to analysis.py" in log
    assert "notebook: IPython magics left out (not Python): %matplotlib" in log
