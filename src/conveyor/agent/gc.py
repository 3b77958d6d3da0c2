"""`conveyor gc` on an agent machine: what Conveyor leaves on disk, found, sized, and removed by age and total size.

Three kinds of things, each with its own notion of "in use", which gc never removes:

- venv cache entries (env/cache.py): in use while a task holds its lease (the entry's shared use lock); those of
  container runs too, a cache per image under `<agent.venvs_cache.path>/images` (runtimes/container.py);
- build folders under agent.venvs_dir: `build-<task>` (`conveyor build`), `tasks/<task>` (work folders kept by
  agent.keep_work_dirs) and the uncached venv slots `<python>[.n]` (in use while their `.lock` is held); a folder
  some process works in (its cwd) is in use;
- container images Conveyor built: `conveyor build --docker` images (label conveyor.task) and Kubernetes bundle
  images (conveyor/bundle:*), in docker and podman; one a container (even a stopped one) uses stays — the engine
  refuses to remove it.

Age is the time since last use where Conveyor records one (a cache entry's symlink is touched on every hit; a
container run notes its image, runtimes/image_uses.py), else since the last change of the folder or the image's
creation. Size pruning removes least recently used first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from conveyor.config import Config
from conveyor.env.cache import Entry, FileLock, VenvCache
from conveyor.errors import UserError
from conveyor.runtimes import image_uses

log = logging.getLogger("conveyor.gc")

BUNDLE_IMAGES = "conveyor/bundle"  # runtimes/k8s.py tags its bundle images so
BUILT_IMAGE_LABEL = "conveyor.task"  # agent/image_build.py labels the images it commits so
ENGINES = ("docker", "podman")
ENGINE_TIMEOUT_SEC = 120
_SLOT = re.compile(r"^\d+\.\d+(\.\d+)?$")  # env/python.py's uncached venv folders: 3.11, 3.11.1, ...
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$", re.I)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str) -> float:
    """'14d', '12h', '30m', '90s', '2w' (a bare number is days) → seconds."""
    found = _DURATION.match(text)
    if not found:
        raise UserError(f"{text!r} is not a duration", hint="Write it as 14d, 12h, 30m, 90s or 2w")
    return float(found.group(1)) * _SECONDS[(found.group(2) or "d").lower()]


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5T', '20GiB', a number of bytes → bytes (binary units: G is 2**30)."""
    found = _SIZE.match(text)
    if not found:
        raise UserError(f"{text!r} is not a size", hint="Write it as 20G, 500M or 1.5T")
    return int(float(found.group(1)) * _BYTES[found.group(2).lower()])


def human_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


@dataclass
class Item:
    """One thing gc may remove."""
    kind: str  # venv-cache | build-folder | image
    name: str  # what a person recognises: the path, or the image's tag
    size: int  # bytes
    last_used: float  # epoch seconds
    remove: Callable[[], str | None]  # removes it; None when done, else why it stayed (in use)
    in_use: Callable[[], str | None] = lambda: None  # why it would stay, for a dry run; None when not known to be


@dataclass
class Outcome:
    item: Item
    reason: str  # why it goes: "unused 20 days" | "over --max-size"
    kept: str | None = None  # why it stayed after all (in use), None when removed (or, in a dry run, removable)


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (links not followed: a venv's python is a link to the base interpreter)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue  # removed meanwhile
    return total


# --- venv cache -----------------------------------------------------------------------------------------------------

IMAGE_CACHES = "images"  # runtimes/container.py: the venv cache of container runs, a folder per image


def venv_cache_items(cfg: Config) -> list[Item]:
    cache = VenvCache.from_config(cfg)
    if cache is None:
        return []
    caches = [cache]
    per_image = cache.root / IMAGE_CACHES
    if per_image.is_dir():
        caches += [VenvCache(path, max_entries=cache.max_entries, free_space_gb=cache.free_space_gb,
                             lock_timeout=cache.lock_timeout, build_wait=cache.build_wait)
                   for path in sorted(per_image.iterdir()) if path.is_dir() and not path.is_symlink()]
    items = []
    for each in caches:
        try:
            entries = each.entries()
        except OSError as exc:  # a container's cache made by the image's root, gc running as the agent's user
            log.warning("gc: cannot read the venv cache %s (%s); run gc as the user its tasks run as", each.root,
                        exc.strerror or exc.__class__.__name__)
            continue
        items += [Item("venv-cache", str(entry.path), tree_size(entry.path), entry.last_used,
                       *_cache_checks(each, entry)) for entry in entries]
    return items


def _cache_checks(cache: VenvCache, entry: Entry) -> tuple[Callable[[], str | None], Callable[[], str | None]]:
    # A cache gc may not lock (a container's, made by the image's root while gc runs as the agent's user) stays.
    def remove() -> str | None:
        try:
            return None if cache.remove(entry) else "in use by a task"
        except OSError as exc:
            return _not_accessible(exc)

    def in_use() -> str | None:
        try:
            return "in use by a task" if cache.in_use(entry.key) else None
        except OSError as exc:
            return _not_accessible(exc)
    return remove, in_use


def _not_accessible(exc: OSError) -> str:
    return f"not accessible to this user ({exc.strerror or exc.__class__.__name__})"


# --- build folders --------------------------------------------------------------------------------------------------

def build_folder_items(cfg: Config) -> list[Item]:
    root = cfg.get_path("agent.venvs_dir")
    if root is None or not root.is_dir():
        return []
    busy = _working_dirs()
    items = []
    for path in _build_folders(root):
        lock = path.with_name(path.name + ".lock") if _SLOT.match(path.name) else None
        items.append(Item("build-folder", str(path), tree_size(path), _last_change(path),
                          *_folder_checks(path, lock, busy)))
    return items


def _build_folders(root: Path) -> Iterator[Path]:
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.is_symlink() and (path.name.startswith("build-") or _SLOT.match(path.name)):
            yield path
    tasks = root / "tasks"
    if tasks.is_dir():
        yield from (p for p in sorted(tasks.iterdir()) if p.is_dir() and not p.is_symlink())


def _last_change(path: Path) -> float:
    """The newest mtime of the folder and what is directly in it (a full walk of a venv costs too much)."""
    newest = path.stat().st_mtime
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return newest


def _working_dirs() -> list[Path]:
    """The current directories of the processes this user can see: a task runs in its work folder."""
    found = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if pid.isdigit():
            try:
                found.append(Path(os.readlink(f"/proc/{pid}/cwd")))
            except OSError:
                continue
    return found


def _folder_checks(path: Path, lock_path: Path | None, busy: list[Path]
                   ) -> tuple[Callable[[], str | None], Callable[[], str | None]]:
    def worked_in() -> str | None:
        return "a process works in it" if any(cwd == path or path in cwd.parents for cwd in busy) else None

    def remove() -> str | None:
        lock = FileLock(lock_path) if lock_path is not None else None
        if lock is not None and not lock.acquire():
            return "in use by a task"
        try:
            if worked_in():
                return worked_in()
            shutil.rmtree(path, ignore_errors=True)
            return None if not path.exists() else "could not be removed (permissions?)"
        finally:
            if lock is not None:
                lock.release()

    def in_use() -> str | None:
        if lock_path is not None:
            lock = FileLock(lock_path)
            if not lock.acquire():
                return "in use by a task"
            lock.release()
        return worked_in()
    return remove, in_use


# --- images ---------------------------------------------------------------------------------------------------------

def image_items(cfg: Config, engines: tuple[str, ...] = ENGINES) -> list[Item]:
    items = []
    for engine in engines:
        if shutil.which(engine) is None:
            continue
        ids = _engine_lines(engine, ["image", "ls", "-q", "--no-trunc", "--filter", f"label={BUILT_IMAGE_LABEL}"])
        ids += _engine_lines(engine, ["image", "ls", "-q", "--no-trunc", BUNDLE_IMAGES])
        for image_id in dict.fromkeys(ids):
            image = _inspect(cfg, engine, image_id)
            if image is not None:
                items.append(image)
    return items


def _engine_lines(engine: str, args: list[str], split: bool = True) -> list[str]:
    """The engine's answer, in words (or lines); empty when it fails."""
    try:
        done = subprocess.run([engine, *args], capture_output=True, text=True, timeout=ENGINE_TIMEOUT_SEC)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s %s: %s", engine, " ".join(args[:2]), exc)
        return []
    if done.returncode != 0:  # no daemon on this machine, say: nothing of it to collect
        log.info("%s is not answering (%s); its images are skipped", engine, done.stderr.strip()[:200])
        return []
    return done.stdout.split() if split else done.stdout.splitlines()


def _inspect(cfg: Config, engine: str, image_id: str) -> Item | None:
    # one line, fields apart by "|": podman prints Created as Go's time ("2026-11-29 21:57:27.1 +0000 UTC"), docker
    # as RFC 3339; json for the tags works in both
    lines = _engine_lines(engine, ["image", "inspect", "--format", "{{.Size}}|{{.Created}}|{{json .RepoTags}}",
                                   image_id], split=False)
    fields = lines[0].split("|", 2) if lines else []
    if len(fields) != 3:
        return None
    try:
        size, tags = int(fields[0]), [str(t) for t in json.loads(fields[2]) or []]
    except ValueError:
        return None
    refs = tags or [image_id]
    created = _timestamp(fields[1])
    used = image_uses.last_use(cfg, engine, [image_id, *tags])
    last_used = max(created, used or created)
    return Item("image", f"{engine}:{refs[0]}" if tags else f"{engine}:{image_id[:19]}", size, last_used,
                _image_remover(cfg, engine, refs, [image_id, *tags], last_used))


def _timestamp(text: str) -> float:
    """When an image was made, as the engines write it (RFC 3339 or Go's time format) → epoch seconds; now when
    unreadable (so that it is not taken for old)."""
    found = re.match(r"^\s*(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?", text)
    if not found:
        return time.time()
    zone = (found.group(3) or "Z").replace("Z", "+00:00")
    if ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    return datetime.fromisoformat(f"{found.group(1)}T{found.group(2)}{zone}").timestamp()


def _image_remover(cfg: Config, engine: str, refs: list[str], noted: list[str],
                   last_used: float) -> Callable[[], str | None]:
    def remove() -> str | None:
        # A task started from it meanwhile. (One that notes its use between here and `image rm` still loses it: the
        # window is a few milliseconds; the engine refuses only once its container exists.)
        if (image_uses.last_use(cfg, engine, noted) or 0.0) > last_used:
            return "used since gc looked"
        done = subprocess.run([engine, "image", "rm", *refs], capture_output=True, text=True,
                              timeout=ENGINE_TIMEOUT_SEC)
        if done.returncode == 0:
            image_uses.forget(cfg, engine, noted)
            return None
        why = (done.stderr.strip().splitlines() or ["refused"])[-1]
        return "in use by a container" if "container" in why else why[:200]
    return remove


# --- the pass -------------------------------------------------------------------------------------------------------

def plan(items: list[Item], *, older_than: float | None, max_size: int | None, now: float | None = None
         ) -> list[Outcome]:
    """What goes: everything unused for longer than `older_than`, then, least recently used first, enough of the
    rest to bring the total to `max_size`."""
    now = time.time() if now is None else now
    going: list[Outcome] = []
    rest: list[Item] = []
    for item in sorted(items, key=lambda i: i.last_used):
        if older_than is not None and now - item.last_used > older_than:
            going.append(Outcome(item, f"unused {_age(now - item.last_used)}"))
        else:
            rest.append(item)
    if max_size is not None:
        total = sum(item.size for item in rest)
        for item in rest:
            if total <= max_size:
                break
            busy = item.in_use()  # it stays and still counts: the next one goes in its place
            going.append(Outcome(item, "over --max-size", kept=busy))
            if busy is None:
                total -= item.size
    return going


def run(outcomes: list[Outcome], *, dry_run: bool) -> list[Outcome]:
    """Remove what `plan` chose (nothing in a dry run); each outcome says whether it stayed and why."""
    if dry_run:
        for outcome in outcomes:
            outcome.kept = outcome.item.in_use()
        return outcomes
    for outcome in outcomes:
        if outcome.kept is not None:
            continue  # in use when planned
        try:
            outcome.kept = outcome.item.remove()
        except (OSError, subprocess.SubprocessError) as exc:
            outcome.kept = str(exc)
        if outcome.kept is None:
            log.info("gc: removed %s %s (%s, %s)", outcome.item.kind, outcome.item.name,
                     human_size(outcome.item.size), outcome.reason)
    return outcomes


def _age(seconds: float) -> str:
    for unit, span in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f} {unit}"
    return f"{seconds:.0f} seconds"
