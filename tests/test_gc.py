"""`conveyor gc`: real venvs from the venv cache, real build folders, real docker images and a real server's logs go
by age and by total size; what a running task uses stays; a dry run removes nothing and says what it would free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ServerProcess
from conveyor.agent import gc
from conveyor.config.loader import load_config
from conveyor.env.cache import LOCKS_DIR, FileLock, Lease, VenvCache
from conveyor.runtimes import image_uses

DAY = 86400.0


def _venv(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)


@pytest.fixture
def agent_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "clearml.conf"
    conf.write_text(f'agent {{ venvs_dir: "{tmp_path / "venvs"}"\n'
                    f'        venvs_cache {{ path: "{tmp_path / "cache"}", max_entries: 10 }} }}\n', encoding="utf-8")
    return conf


def _cache(tmp_path: Path) -> VenvCache:
    return VenvCache(tmp_path / "cache", max_entries=10, free_space_gb=0, lock_timeout=5, build_wait=30)


def _cached(cache: VenvCache, name: str, age_days: float) -> Lease:
    """A real venv built through the cache, last used `age_days` ago; the returned lease holds it in use."""
    key = uuid.uuid5(uuid.NAMESPACE_DNS, name).hex * 2
    lease = cache.acquire(key, _venv, {"name": name}, lambda _line: None)
    stamp = time.time() - age_days * DAY
    os.utime(cache.root / key, (stamp, stamp), follow_symlinks=False)  # the entry's LRU clock
    return lease


def _aged(path: Path, age_days: float, mib: int = 0) -> Path:
    """A folder (with `mib` MiB of data) whose last change was `age_days` ago."""
    path.mkdir(parents=True, exist_ok=True)
    if mib:
        (path / "data").write_bytes(os.urandom(mib << 20))
    stamp = time.time() - age_days * DAY
    for child in [*path.iterdir(), path]:
        os.utime(child, (stamp, stamp), follow_symlinks=False)
    return path


def _gc(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "CONVEYOR_"))}
    return subprocess.run([sys.executable, "-m", "conveyor", "--config-file", str(conf), "gc", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_old_venvs_and_folders_go_and_what_a_task_uses_stays(tmp_path: Path, agent_conf: Path) -> None:
    cache = _cache(tmp_path)
    old = _cached(cache, "old", 30)
    old.release()
    # container runs' venvs: a cache per image (runtimes/container.py mounts it)
    image_cache = VenvCache(cache.root / gc.IMAGE_CACHES / ("ab" * 16), max_entries=10, free_space_gb=0,
                            lock_timeout=5, build_wait=30)
    old_in_image = _cached(image_cache, "old-in-image", 30)
    old_in_image.release()
    fresh_in_image = _cached(image_cache, "fresh-in-image", 1)
    fresh_in_image.release()
    busy = _cached(cache, "busy", 30)  # a running task holds it
    fresh = _cached(cache, "fresh", 1)
    fresh.release()
    venvs = tmp_path / "venvs"
    build = _aged(venvs / "build-0123", 20)
    work = _aged(venvs / "tasks" / "4567", 20)
    worked_in = _aged(venvs / "tasks" / "89ab", 20)
    slot = _aged(venvs / "3.11", 20)
    slot_lock = FileLock(venvs / "3.11.lock")
    assert slot_lock.acquire()  # a task building in the uncached slot
    other = _aged(venvs / "notes", 20)  # not Conveyor's: never touched
    young = _aged(venvs / "build-cdef", 2)
    runner = subprocess.Popen(["sleep", "60"], cwd=worked_in)  # a task working in its folder
    try:
        dry = _gc(agent_conf, "--older-than", "14d", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        for path in (old.path, old_in_image.path, build, work):
            assert "would remove  " in dry.stdout and str(path) in dry.stdout and path.exists()
        assert "would free" in dry.stdout and "(3 in use, kept)" in dry.stdout, dry.stdout
        assert old.path.exists() and (cache.root / old.key).is_symlink()

        done = _gc(agent_conf, "--older-than", "14d")
        assert done.returncode == 0, done.stderr
        assert not old.path.exists() and not (cache.root / old.key).exists()
        assert not old_in_image.path.exists() and not (image_cache.root / old_in_image.key).exists()
        assert fresh_in_image.path.exists()
        assert not build.exists() and not work.exists()
        assert busy.path.exists() and (cache.root / busy.key).is_symlink()  # still in the cache
        assert worked_in.exists() and slot.exists() and other.exists() and young.exists() and fresh.path.exists()
        kept = [line for line in done.stdout.splitlines() if line.startswith("kept")]
        assert any(str(busy.path) in line and "in use by a task" in line for line in kept), done.stdout
        assert any(str(worked_in) in line and "a process works in it" in line for line in kept), done.stdout
        assert any(str(slot) in line and "in use by a task" in line for line in kept), done.stdout
        assert "freed " in done.stdout
    finally:
        runner.kill()
        runner.wait()
        busy.release()
        slot_lock.release()
    assert _gc(agent_conf, "--older-than", "14d").returncode == 0
    assert not busy.path.exists() and not worked_in.exists() and not slot.exists()  # released: they go too


def test_a_cache_gc_cannot_lock_stays_and_the_rest_is_collected(tmp_path: Path, agent_conf: Path) -> None:
    """A container's venv cache made by the image's root, while gc runs as the agent's user, cannot be locked: it
    stays, said so, and gc goes on (it once ended in a traceback under --max-size)."""
    image_cache = VenvCache(_cache(tmp_path).root / gc.IMAGE_CACHES / ("cd" * 16), max_entries=10, free_space_gb=0,
                            lock_timeout=5, build_wait=30)
    locked_out = _cached(image_cache, "locked-out", 30)
    locked_out.release()
    locks = image_cache.root / LOCKS_DIR
    shutil.rmtree(locks)
    locks.write_text("")  # its locks cannot be opened (as a root-owned folder for another user; root reads anything)
    build = _aged(tmp_path / "venvs" / "build-0123", 20, mib=2)
    for args in (["--max-size", "1M", "--dry-run"], ["--older-than", "14d", "--max-size", "1M"]):
        done = _gc(agent_conf, *args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert any(str(locked_out.path) in line and "not accessible to this user" in line
                   for line in done.stdout.splitlines() if line.startswith("kept")), done.stdout
    assert locked_out.path.exists() and not build.exists()


def test_image_ids_match_as_either_engine_writes_them(agent_conf: Path) -> None:
    cfg = load_config(agent_conf, environ={})
    image_uses.record(cfg, "podman", ["0123abcd" * 8])  # podman's `inspect {{.Id}}`
    assert image_uses.last_use(cfg, "podman", ["sha256:" + "0123abcd" * 8]) is not None  # its `image ls`
    assert image_uses.last_use(cfg, "docker", ["sha256:" + "0123abcd" * 8]) is None  # per engine


def test_max_size_removes_least_recently_used_first(tmp_path: Path, agent_conf: Path) -> None:
    venvs = tmp_path / "venvs"
    busy, oldest, middle, newest = (_aged(venvs / f"build-{n}", age, mib=2)
                                    for n, age in (("a", 4), ("b", 3), ("c", 2), ("d", 1)))
    runner = subprocess.Popen(["sleep", "60"], cwd=busy)  # the least recently changed, but in use
    try:
        done = _gc(agent_conf, "--max-size", "5M", "--only", "folders")
    finally:
        runner.kill()
        runner.wait()
    assert done.returncode == 0, done.stderr
    assert busy.exists() and not oldest.exists() and not middle.exists() and newest.exists(), done.stdout
    assert "over --max-size" in done.stdout and "freed 4.0 MiB: 2 of 4 items (1 in use, kept)" in done.stdout, \
        done.stdout


def test_bad_input_is_one_clear_line(agent_conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conveyor.cli.main import main

    for args, expected in ((["--older-than", "two weeks"], "'two weeks' is not a duration"),
                           (["--max-size", "lots"], "'lots' is not a size"),
                           ([], "Nothing to collect"),
                           (["--server-logs-older-than", "30d", "--data-dir", "/nonexistent/x"],
                            "No server database at /nonexistent/x"),
                           (["--server-logs-older-than", "30d", "--db", "postgresql://gc:s3cret@127.0.0.1:1/x"],
                            "Cannot prune the logs in postgresql+psycopg://gc:***@127.0.0.1:1/x: connection failed")):
        assert main(["--config-file", str(agent_conf), "gc", *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and "s3cret" not in err, err


@pytest.fixture
def docker_images(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Images as Conveyor makes them (a `conveyor build --docker` image, a bundle image), one a container uses, and
    one that is not Conveyor's, imported from a tiny tar (no registry)."""
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        from conftest import unavailable

        unavailable("docker is not running")
    tag = uuid.uuid4().hex[:10]
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "hello").write_text("hello\n")
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-cf", str(tar), "."], check=True)
    names = {"built": f"conveyor-gc-test/built:{tag}", "bundle": f"{gc.BUNDLE_IMAGES}:gc-test-{tag}",
             "used": f"conveyor-gc-test/used:{tag}", "foreign": f"conveyor-gc-test/foreign:{tag}"}
    for role, name in names.items():
        label = [] if role == "foreign" else ["--change", f"LABEL {gc.BUILT_IMAGE_LABEL}=gc-test-{role}"]
        if role == "bundle":
            label = []  # bundle images are found by their name
        # a distinct layer each, so that removing one image never touches another's
        (tmp_path / "rootfs" / "hello").write_text(role)
        subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-cf", str(tar), "."], check=True)
        subprocess.run(["docker", "import", *label, str(tar), name], check=True, capture_output=True, timeout=60)
    container = subprocess.run(["docker", "create", names["used"], "/hello"], check=True, capture_output=True,
                               text=True, timeout=60).stdout.strip()
    try:
        yield names
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
        subprocess.run(["docker", "image", "rm", "-f", *names.values()], capture_output=True, timeout=60)


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True, timeout=60).returncode == 0


def test_conveyors_images_go_and_one_a_container_uses_stays(docker_images: dict[str, str], agent_conf: Path) -> None:
    # The engine's real listing; the pass is limited to this test's images (others' tests build images too)
    cfg = load_config(agent_conf, environ={})
    ours = {f"docker:{name}" for name in docker_images.values()}
    items = [item for item in gc.image_items(cfg, ("docker",)) if item.name in ours]
    assert {item.name for item in items} == ours - {f"docker:{docker_images['foreign']}"}
    assert all(item.size > 0 and abs(item.last_used - time.time()) < 600 for item in items)
    time.sleep(1.1)
    dry = gc.run(gc.plan(items, older_than=1, max_size=None), dry_run=True)
    assert len(dry) == 3 and all(_image_exists(name) for name in docker_images.values())
    outcomes = {o.item.name: o.kept for o in gc.run(gc.plan(items, older_than=1, max_size=None), dry_run=False)}
    assert outcomes[f"docker:{docker_images['used']}"] == "in use by a container"
    assert not _image_exists(docker_images["built"]) and not _image_exists(docker_images["bundle"])
    assert _image_exists(docker_images["used"]) and _image_exists(docker_images["foreign"])


def test_an_image_is_aged_by_its_last_use_not_its_creation(docker_images: dict[str, str], agent_conf: Path) -> None:
    cfg = load_config(agent_conf, environ={})
    time.sleep(1.1)  # every image is now over a second old
    image_uses.record(cfg, "docker", [docker_images["built"]])  # as a container run of it notes (test_containers)

    def planned() -> set[str]:
        ours = {f"docker:{name}" for name in docker_images.values()}
        items = [item for item in gc.image_items(cfg, ("docker",)) if item.name in ours]
        return {o.item.name for o in gc.plan(items, older_than=1, max_size=None)}

    assert planned() == {f"docker:{docker_images['bundle']}", f"docker:{docker_images['used']}"}
    time.sleep(1.1)
    assert f"docker:{docker_images['built']}" in planned()  # its last use is a second old now too
    built = [i for i in gc.image_items(cfg, ("docker",)) if i.name == f"docker:{docker_images['built']}"]
    outcomes = {o.item.name: o.kept for o in gc.run(gc.plan(built, older_than=1, max_size=None), dry_run=False)}
    assert outcomes == {f"docker:{docker_images['built']}": None}
    assert image_uses.last_use(cfg, "docker", [docker_images["built"]]) is None  # its note went with it


def test_server_logs_of_ended_tasks_go_and_a_running_tasks_stay(server: ServerProcess, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    api = server.client()
    ended, running = (api.call("tasks.create", {"name": f"{n}-{uuid.uuid4().hex[:6]}", "type": "training"})["id"]
                      for n in ("ended", "running"))
    for task in (ended, running):
        api.call("tasks.started", {"task": task, "force": True})
        api.call("events.add_batch", {"requests": [
            {"task": task, "type": "log", "level": "info", "msg": f"line {i} " + "x" * 100, "timestamp": 1}
            for i in range(50)]})
        api.call("events.add_batch", {"requests": [{"task": task, "type": "training_stats_scalar", "metric": "loss",
                                                    "variant": "train", "iter": 1, "value": 0.5}]})
    api.call("tasks.completed", {"task": ended, "force": True})

    def lines(task: str) -> int:
        return len(api.call("events.get_task_log", {"task": task, "batch_size": 500})["events"])

    where = ["--db", server.db] if server.db else ["--data-dir", str(server.home / ".conveyor")]
    conf = tmp_path / "empty.conf"
    conf.write_text("", encoding="utf-8")
    from conveyor.cli.main import main

    assert main(["--config-file", str(conf), "gc", "--server-logs-older-than", "0s", "--dry-run", *where]) == 0
    dry = capsys.readouterr().out
    assert "would free" in dry and "50 lines of 1 ended tasks" in dry, dry
    assert lines(ended) == 50
    assert main(["--config-file", str(conf), "gc", "--server-logs-older-than", "0s", *where]) == 0
    done = capsys.readouterr().out
    assert "freed" in done and "50 lines of 1 ended tasks" in done, done
    assert lines(ended) == 0 and lines(running) == 50
    scalars = api.call("events.scalar_metrics_iter_histogram", {"task": ended})
    assert scalars.get("loss"), "scalars are the experiment's results: they stay"


@pytest.mark.parametrize("created", ["2026-11-29T21:57:27.123456789Z",  # docker
                                     "2026-11-29 21:57:27.123456789 +0000 UTC",  # podman (Go's time format)
                                     "2026-11-29 22:57:27 +0100 CET"])
def test_image_ages_read_as_either_engine_writes_them(created: str) -> None:
    assert gc._timestamp(created) == 1795989447.0  # 2026-11-29 21:57:27 UTC: an image that old is collected


def test_a_cache_entry_planted_to_point_outside_the_cache_loses_only_its_link(tmp_path: Path) -> None:
    """Tasks run as the agent's user and may write in a shared cache: a link named like an entry that points at
    someone's folder must not make gc delete that folder."""
    cache = _cache(tmp_path)
    cache.root.mkdir(parents=True, exist_ok=True)
    precious = _aged(tmp_path / "precious", 30, mib=1)
    key = uuid.uuid5(uuid.NAMESPACE_DNS, "planted").hex * 2
    (cache.root / key).symlink_to(precious)
    planted = [e for e in cache.entries() if e.key == key]
    assert planted, "the planted link is not seen as an entry: the check below would check nothing"
    assert cache.remove(planted[0])
    assert not (cache.root / key).is_symlink()
    assert (precious / "data").stat().st_size == 1 << 20
