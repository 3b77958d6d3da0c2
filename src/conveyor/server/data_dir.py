"""The server's data on disk is readable by its owner only: the database holds the token signing key, so anyone who
can read it can sign admin tokens. The data dir and the files dir are 0700, the database and its WAL, SHM and
journal files 0600 (SQLite gives WAL and SHM the mode of the database file, so the database is created 0600), and
whatever else lies at the top of the data dir (key files) 0600. Installs made before this are tightened on start."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("conveyor.server")

_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def sqlite_path(db_url: str) -> Path | None:
    if not db_url.startswith("sqlite"):
        return None
    path = db_url.split("///", 1)[-1]
    return None if not path or path == ":memory:" else Path(path)


def _tighten(path: Path, changed: list[str]) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    wanted = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
    try:
        os.chmod(path, wanted)
    except OSError as exc:  # not ours (another owner): say so, and go on serving
        log.warning("cannot make %s private (%s): other users may read it", path, exc.strerror)
        return
    changed.append(f"{path} {mode:o}->{wanted:o}")


def secure(data_dir: Path, files_dir: Path, db_url: str) -> list[str]:
    """Create the data and files dirs private, tighten what is there; returns what was tightened (also logged)."""
    changed: list[str] = []
    for folder in (data_dir, files_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _tighten(folder, changed)
    for entry in sorted(data_dir.iterdir()):
        _tighten(entry, changed)
    db = sqlite_path(db_url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not db.exists():
            os.close(os.open(db, os.O_CREAT | os.O_WRONLY, 0o600))  # before SQLite creates it with the umask's mode
        for path in (db, *(db.with_name(db.name + side) for side in _SQLITE_SIDE_FILES)):
            _tighten(path, changed)
    if changed:
        log.warning("made the server's data private (owner-only; it holds the token signing key): %s",
                    ", ".join(changed))
    return changed
