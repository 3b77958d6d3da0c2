"""The venv cache: finished environments kept by key, used in place by the tasks that need them.

Layout under agent.venvs_cache.path::

    <key>                 symlink → envs/<key>.<random>; it exists only for a complete, working venv
    envs/<key>.<random>/  the venv itself, built at this path and never moved (venvs are not relocatable:
                          console scripts and activate hold absolute paths)
    .locks/<key>.use      held shared by every task using the entry; eviction needs it exclusively
    .locks/<key>.build    held exclusively while the entry is being built

A miss builds into a fresh envs/ dir and publishes it by creating the symlink (atomic), so a failed or
interrupted build never shows up under the key, and a concurrent build of the same key waits for the
first and then uses it. The symlink's own mtime is the LRU clock (touched on every hit). Locks are
fcntl.flock locks, released by the kernel when their process dies, so a crashed task never pins an entry.
Lock files are never deleted (deleting a lock file others may hold is racy); they are empty.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from conveyor.config import Config
from conveyor.errors import InternalError
from conveyor.progress import Log

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
META_FILE = ".conveyor-env.json"  # in each entry: what was built, for people and tools
ENVS_DIR = "envs"
LOCKS_DIR = ".locks"
_POLL_FIRST, _POLL_MAX = 0.01, 0.2  # seconds between tries of a busy lock


class CacheUnavailable(InternalError):
    """The cache cannot serve this build (disk too full, another build took too long): build outside it."""


class FileLock:
    """An fcntl.flock lock on a file; every instance has its own open file, so threads conflict like processes."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, *, shared: bool = False, timeout: float = 0.0) -> bool:
        """Take the lock, waiting up to `timeout` seconds; False when it stayed busy."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open as long as the lock
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline, pause = time.monotonic() + timeout, _POLL_FIRST
        while True:
            try:
                fcntl.flock(handle, mode)
                self._file = handle
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(pause)
                pause = min(pause * 2, _POLL_MAX)

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


@dataclass
class Lease:
    """A cache entry in use by one task: the entry cannot be evicted until `release()`."""
    key: str
    path: Path
    hit: bool  # False when this call built it
    lock: FileLock = field(repr=False)

    def release(self) -> None:
        self.lock.release()


@dataclass
class Entry:
    key: str
    path: Path
    last_used: float  # epoch seconds


class VenvCache:
    def __init__(self, root: Path, *, max_entries: int, free_space_gb: float, lock_timeout: float, build_wait: float):
        self.root = root
        self.max_entries = max_entries
        self.free_space_gb = free_space_gb
        self.lock_timeout = lock_timeout
        self.build_wait = build_wait

    @classmethod
    def from_config(cls, cfg: Config) -> VenvCache | None:
        """The cache agent.venvs_cache describes, or None when it is off (no path, or max_entries 0)."""
        root = cfg.get_path("agent.venvs_cache.path")
        max_entries = int(cfg.get("agent.venvs_cache.max_entries") or 0)
        if root is None or max_entries <= 0:
            return None
        return cls(root, max_entries=max_entries,
                   free_space_gb=float(cfg.get("agent.venvs_cache.free_space_threshold_gb") or 0),
                   lock_timeout=float(cfg.get("agent.venvs_cache.lock_timeout")),
                   build_wait=float(cfg.get("agent.venvs_cache.build_wait_sec")))

    # -- use ---------------------------------------------------------------------------------------------

    def acquire(self, key: str, build: Callable[[Path], None], meta: dict[str, Any], log: Log) -> Lease:
        """The entry for `key`, built with `build(path)` on a miss; held in use until the lease is released.
        Raises CacheUnavailable when the cache cannot take the build, and whatever `build` raises."""
        use = FileLock(self._lock_path(key, "use"))
        if not use.acquire(shared=True, timeout=self.lock_timeout):
            raise CacheUnavailable(f"the cache entry stayed locked for {self.lock_timeout:g} s "
                                   "(agent.venvs_cache.lock_timeout)")
        try:
            path = self.lookup(key)
            if path is not None:
                return Lease(key, path, True, use)
            path, hit = self._build_once(key, build, meta, log)
            if not hit:
                self.evict(log, keep={key})
            return Lease(key, path, hit, use)
        except BaseException:
            use.release()
            raise

    def lookup(self, key: str) -> Path | None:
        """The venv of a complete entry, touched for LRU; None on a miss. Call with the use lock held."""
        link = self.root / key
        try:
            target = (self.root / os.readlink(link)).resolve()
        except OSError:
            return None
        if not (target / META_FILE).is_file() or not os.path.exists(target / "bin" / "python"):
            return None  # broken (its interpreter was removed, say): rebuilt under the build lock
        try:
            os.utime(link, follow_symlinks=False)
        except OSError:
            pass  # a read-only cache still serves
        return target

    def _build_once(self, key: str, build: Callable[[Path], None], meta: dict[str, Any], log: Log) -> tuple[Path, bool]:
        lock = FileLock(self._lock_path(key, "build"))
        if not lock.acquire():
            log(f"python: another task is building this venv ({key[:8]}…); waiting for it")
            if not lock.acquire(timeout=self.build_wait):
                raise CacheUnavailable(f"another task has been building the same venv for {self.build_wait:g} s "
                                       "(agent.venvs_cache.build_wait_sec)")
        try:
            path = self.lookup(key)
            if path is not None:  # the other build finished while this one waited
                return path, True
            self._unlink(self.root / key)  # a broken entry, if any
            self._make_room(log)
            target = self.root / ENVS_DIR / f"{key}.{secrets.token_hex(4)}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                build(target)
                (target / META_FILE).write_text(json.dumps({**meta, "key": key, "created": time.time()}, indent=1),
                                                encoding="utf-8")
                os.symlink(os.path.relpath(target, self.root), self.root / key)  # publish: atomic
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            return target, False
        finally:
            lock.release()

    # -- eviction ----------------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Published entries, least recently used first."""
        found = []
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for name in names:
            link = self.root / name
            if not KEY_RE.match(name) or not link.is_symlink():
                continue
            try:
                found.append(Entry(name, (self.root / os.readlink(link)).resolve(), link.lstat().st_mtime))
            except OSError:
                continue  # evicted meanwhile
        return sorted(found, key=lambda e: e.last_used)

    def in_use(self, key: str) -> bool:
        lock = FileLock(self._lock_path(key, "use"))
        if lock.acquire():
            lock.release()
            return False
        return True

    def evict(self, log: Log, keep: AbstractSet[str] = frozenset()) -> list[str]:
        """Remove least-recently-used entries beyond max_entries, and more while free disk is below the
        threshold; entries in use (or in `keep`) stay. Also clears what crashed builds left. Returns the keys."""
        removed: list[str] = []
        entries = [e for e in self.entries() if e.key not in keep]
        excess = len(entries) + len(keep) - self.max_entries
        for entry in entries:
            if excess <= 0 and not self._low_on_space():
                break
            if self._remove(entry):
                removed.append(entry.key)
                excess -= 1
                log(f"python: evicted cached venv {entry.key[:8]}… (least recently used)")
        self._clear_orphans()
        return removed

    def _make_room(self, log: Log) -> None:
        if not self._low_on_space():
            return
        for entry in self.entries():
            if self._remove(entry):
                log(f"python: evicted cached venv {entry.key[:8]}… (disk space low)")
            if not self._low_on_space():
                return
        raise CacheUnavailable(f"only {self._free_gb():.1f} GB free under {self.root}, below "
                               f"agent.venvs_cache.free_space_threshold_gb ({self.free_space_gb:g})")

    def remove(self, entry: Entry) -> bool:
        """Remove one entry unless a task is using it (`conveyor gc`); False when it stayed."""
        return self._remove(entry)

    def _remove(self, entry: Entry) -> bool:
        lock = FileLock(self._lock_path(entry.key, "use"))
        if not lock.acquire():
            return False  # a task is using it
        try:
            link = self.root / entry.key
            try:
                target = (self.root / os.readlink(link)).resolve()
            except OSError:
                return False  # someone else evicted it
            self._unlink(link)  # first, so that nobody starts using what is being deleted
            envs = (self.root / ENVS_DIR).resolve()
            if target.parent != envs:  # a link planted to point elsewhere: only the link goes
                log.warning("venv cache entry %s pointed outside %s (%s): removed the link only",
                            entry.key, envs, target)
                return True
            shutil.rmtree(target, ignore_errors=True)
            return True
        finally:
            lock.release()

    def _clear_orphans(self) -> None:
        """envs/ dirs no symlink points to: left by a build whose process died (its build lock is free)."""
        envs = self.root / ENVS_DIR
        try:
            names = os.listdir(envs)
        except FileNotFoundError:
            return
        for name in names:
            key = name.split(".", 1)[0]
            if not KEY_RE.match(key) or self._points_to(key, envs / name):
                continue
            lock = FileLock(self._lock_path(key, "build"))
            if not lock.acquire():
                continue  # being built right now
            try:
                if not self._points_to(key, envs / name):
                    shutil.rmtree(envs / name, ignore_errors=True)
            finally:
                lock.release()

    def _points_to(self, key: str, target: Path) -> bool:
        try:
            return (self.root / os.readlink(self.root / key)).resolve() == target.resolve()
        except OSError:
            return False

    def _low_on_space(self) -> bool:
        return self.free_space_gb > 0 and self._free_gb() < self.free_space_gb

    def _free_gb(self) -> float:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free / 1e9

    def _lock_path(self, key: str, kind: str) -> Path:
        return self.root / LOCKS_DIR / f"{key}.{kind}"

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
