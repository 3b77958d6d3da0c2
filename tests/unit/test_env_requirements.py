"""What the worker installs from a requirement list recorded on another machine (env/requirements.py)."""

from __future__ import annotations

from pathlib import Path

from conveyor.env.requirements import editable_versions, localize, requested_python

FREEZE = """# Python 3.11.7 (main, Dec  8 2023, 18:56:58) [GCC 11.4.0]
numpy==1.26.4
# Editable install with no version control (mylib==0.3.1)
-e /home/someone/src/mylib
"""


def test_the_python_header_names_the_interpreter_to_use() -> None:
    assert requested_python(FREEZE) == "3.11"
    assert requested_python(["# Python 3.9.18 (main) [Clang]", "six"]) == "3.9"
    assert requested_python("numpy==1.26.4\n") is None
    assert requested_python(None) is None


def test_pip_freeze_comments_give_editable_installs_their_version() -> None:
    assert editable_versions(FREEZE) == {"/home/someone/src/mylib": ("mylib", "0.3.1")}
    # a comment not directly before its -e line says nothing about it
    assert editable_versions("# Editable install (a==1)\nsix\n-e /x/a\n") == {}


def test_local_references_missing_here_are_installed_by_name_and_version(tmp_path: Path) -> None:
    logged: list[str] = []
    here = tmp_path / "vendored"
    here.mkdir()
    lines = [
        "numpy==1.26.4",
        "-e /home/someone/src/mylib",  # a folder of the recording machine, versioned by its freeze comment
        "torch==2.1.0+cu121",  # a local build label
        "mkl-service @ file:///croot/mkl-service_1/work/mkl_service-2.4.0-py311.whl",
        "-e ./vendored",  # a folder that is here stays as it is
        "-e /gone/noname",  # neither name nor version known: skipped
    ]
    out = localize(lines, tmp_path, editable_versions(FREEZE), logged.append)
    assert out == ["numpy==1.26.4", "mylib==0.3.1", "torch==2.1.0", "mkl-service==2.4.0", "-e ./vendored"]
    assert "requirements: -e /home/someone/src/mylib is a folder of the recording machine; installing " \
           "mylib==0.3.1 instead" in logged
    assert any(line.startswith("requirements: -e /gone/noname") and line.endswith("skipped") for line in logged)
    assert len(logged) == 4
