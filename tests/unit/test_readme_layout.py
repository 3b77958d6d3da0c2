"""The README's Layout matches the tree: every file and folder it names exists, and every package is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "conveyor"


def layout() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Layout", 1)[1].split("\n## ", 1)[0]


def named_paths(text: str) -> set[str]:
    return {name for name in re.findall(r"`([A-Za-z_][\w./]*(?:\.py|/))`", text)}


def test_every_file_and_folder_the_layout_names_exists() -> None:
    names = named_paths(layout())
    assert len(names) > 30, "the Layout names too few files to check"
    existing = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")}
    missing = [name for name in sorted(names)
               if not any(e == name.rstrip("/") or e.endswith("/" + name.rstrip("/")) for e in existing)
               and not (ROOT / name).exists()]
    assert missing == []


def test_every_package_is_in_the_layout() -> None:
    names = named_paths(layout())
    packages = [p.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.iterdir()
                if p.is_dir() and (p / "__init__.py").exists()]
    subpackages = [p.name + "/" for p in (PACKAGE / "server").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert [name for name in packages + subpackages if name not in names] == []
