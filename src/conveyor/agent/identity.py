"""Who a daemon is on this machine: its slot (lowest free), its worker id, and the slot file `--stop` and
`--status` read. A slot is held by an flock on its file, so a crashed daemon frees it by dying."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from conveyor.runtimes.run_records import agent_dir

MAX_SLOTS = 256


def slots_dir() -> Path:
    return agent_dir() / "slots"


@dataclass
class Slot:
    index: int
    path: Path
    handle: TextIO

    def describe(self, info: dict[str, Any]) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(info))
        self.handle.flush()

    def release(self) -> None:
        try:
            self.handle.seek(0)
            self.handle.truncate()
        finally:
            self.handle.close()


def take_slot() -> Slot:
    folder = slots_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_SLOTS):
        path = folder / f"{index}.json"
        handle = open(path, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return Slot(index, path, handle)
    raise RuntimeError(f"all {MAX_SLOTS} agent slots on this machine are taken")


def worker_id(cfg_worker_id: str | None, cfg_worker_name: str | None, slot: int, gpus: str | None,
              cpu_only: bool, dynamic: bool = False) -> str:
    """As the reference: an explicit id wins; else <name>:gpu<devices> (<name>:dgpu<devices> with --dynamic-gpus,
    whose tasks report as <name>:gpu<theirs>), <name>:cpu:<slot> or <name>:<slot>."""
    if cfg_worker_id:
        return cfg_worker_id
    name = cfg_worker_name or socket.gethostname()
    if gpus and dynamic:
        return f"{name}:dgpu{gpus}"
    if gpus and not cpu_only:
        return f"{name}:gpu{gpus}"
    if cpu_only:
        return f"{name}:cpu:{slot}"
    return f"{name}:{slot}"


def running_daemons() -> list[dict[str, Any]]:
    """Daemons of this user on this machine: the slot files whose lock is held."""
    found: list[dict[str, Any]] = []
    folder = slots_dir()
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                try:
                    info = json.loads(handle.read() or "{}")
                except json.JSONDecodeError:
                    info = {}
                info.setdefault("slot", int(path.stem) if path.stem.isdigit() else -1)
                found.append(info)
                continue
            fcntl.flock(handle, fcntl.LOCK_UN)
    return found


def started_with(launched_by: str, queues: list[str], gpus: str | None, cpu_only: bool, engine: str | None,
                 services_mode: bool) -> dict[str, Any]:
    """The arguments that tell this machine's daemons apart, as `--stop` compares them: the same command line plus
    --stop stops the daemon it started (as the reference's `--stop` does)."""
    return {"launched_by": launched_by, "queues": sorted(queues), "gpus": gpus or None, "cpu_only": cpu_only,
            "engine": engine, "services_mode": services_mode}


def describe(slot: Slot, worker: str, queues: list[str], argv: list[str], log_file: str | None,
             launch: dict[str, Any]) -> None:
    slot.describe({"slot": slot.index, "pid": os.getpid(), "worker_id": worker, "queues": queues, "argv": argv,
                   "started": time.time(), "log_file": log_file, "started_with": launch})
