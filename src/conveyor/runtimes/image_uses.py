"""When this machine last ran something from an image: the engines keep only when an image was made, and `conveyor
gc` ages the images Conveyor built by their last use (a base image built months ago and used daily is not old).

A use is a file under `<agent.venvs_dir>/image-uses`, one per engine and image reference (an id or a tag), whose
modification time is the last use. Recording is best effort: a task never fails because its use was not noted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from conveyor.config import Config

log = logging.getLogger("conveyor.runtimes")

USES_DIR = "image-uses"


def _folder(cfg: Config) -> Path | None:
    root = cfg.get_path("agent.venvs_dir")
    return root / USES_DIR if root is not None else None


def _name(engine: str, ref: str) -> str:
    # an id as either engine writes it: podman's `inspect` leaves out the `sha256:` its `image ls` writes
    return hashlib.sha256(f"{engine}\0{ref.removeprefix('sha256:')}".encode()).hexdigest()[:32]


def record(cfg: Config, engine: str, refs: Iterable[str]) -> None:
    """Note that `engine` ran a container from the image known by `refs` (its id, its tag) now."""
    folder = _folder(cfg)
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for ref in {r for r in refs if r}:
            path = folder / _name(engine, ref)
            path.write_text(f"{engine} {ref}\n", encoding="utf-8")  # what it is, for a person looking; sets mtime
    except OSError as exc:
        log.debug("could not note the use of an image: %s", exc)


def last_use(cfg: Config, engine: str, refs: Iterable[str]) -> float | None:
    """When `engine` last ran the image known by any of `refs` (epoch seconds), or None when never noted."""
    folder = _folder(cfg)
    if folder is None:
        return None
    found = None
    for ref in refs:
        try:
            when = os.stat(folder / _name(engine, ref)).st_mtime
        except OSError:
            continue
        found = when if found is None else max(found, when)
    return found


def forget(cfg: Config, engine: str, refs: Iterable[str]) -> None:
    """Drop the notes of an image that is gone."""
    folder = _folder(cfg)
    if folder is None:
        return
    for ref in refs:
        try:
            os.unlink(folder / _name(engine, ref))
        except OSError:
            continue
