"""Dynamic and fractional GPUs without a GPU: parsing `--gpus` and `--queue NAME=N`, which GPUs each task gets, the
sub-worker names that carry them, the watchdog's verdicts, foreign processes, and MPS settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conveyor.agent import gpu_mps
from conveyor.agent.gpu_allocation import (
    Allocation,
    DynamicGpus,
    GpuPool,
    GpuRequest,
    allocation_of,
    dynamic_queues,
    parse_gpu_ids,
    parse_queue_spec,
)
from conveyor.agent.gpu_processes import busy_gpus, task_of_pid
from conveyor.agent.gpu_watchdog import GpuWatchdog
from conveyor.agent.gpus import GpuProcess, GpuReading
from conveyor.errors import UserError
from conveyor.runtimes import container_args


def test_gpu_lists_ranges_and_mig_ids() -> None:
    assert parse_gpu_ids("0-2") == ["0", "1", "2"]
    assert parse_gpu_ids("0,2,3") == ["0", "2", "3"]
    assert parse_gpu_ids("0:0,0:1") == ["0.0", "0.1"]
    for bad in ("3-1", "a-b", "0,,1", "0,0", ""):
        with pytest.raises(UserError):
            parse_gpu_ids(bad)


def test_queue_specs_whole_ranges_and_fractions() -> None:
    assert parse_queue_spec("quad_gpu=4") == ("quad_gpu", GpuRequest(4, 4))
    assert parse_queue_spec("opportunistic=1-4") == ("opportunistic", GpuRequest(1, 4))
    assert parse_queue_spec("half_gpu=0.5") == ("half_gpu", GpuRequest(share=4))
    assert parse_queue_spec("eighth=0.125") == ("eighth", GpuRequest(share=1))
    assert parse_queue_spec("one=1.0") == ("one", GpuRequest(1, 1))


@pytest.mark.parametrize("spec, says", [
    ("plain", "says how many GPUs"), ("q=", "says how many GPUs"), ("q=abc", "'abc' is not a number"),
    ("q=0.3", "step of 0.125"), ("q=0", "step of 0.125"), ("q=-1", "step of 0.125"),
    ("q=1.5", "must be a whole number"), ("q=4-2", "from at least 1 up"), ("q=0-2", "from at least 1 up")])
def test_a_malformed_queue_spec_names_itself_and_what_is_expected(spec: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_queue_spec(spec)
    assert spec in str(caught.value) and says in str(caught.value)
    assert caught.value.hint and "NAME=MIN-MAX" in caught.value.hint


def test_dynamic_gpus_needs_gpus_and_no_services_mode() -> None:
    assert dynamic_queues(["a=2", "b=0.25"], "0-3", None) == (["a", "b"], {"a": GpuRequest(2, 2),
                                                                             "b": GpuRequest(share=2)})
    with pytest.raises(UserError, match="needs --gpus"):
        dynamic_queues(["a=2"], None, None)
    with pytest.raises(UserError, match="services-mode"):
        dynamic_queues(["a=2"], "0-3", 2)


def test_the_documented_example_allocates_as_the_docs_say() -> None:
    """--gpus 0-2 --queue dual_gpus=2 quarter_gpu=0.25 half_gpu=0.5 single_gpu=1, one task each, in that order."""
    pool = GpuPool(["0", "1", "2"])
    dual = pool.take("dual", GpuRequest(2, 2), set())
    quarter = pool.take("quarter", GpuRequest(share=2), set())
    half = pool.take("half", GpuRequest(share=4), set())
    assert dual and dual.suffix == "gpu0,1" and dual.visible == "0,1"
    assert quarter and quarter.suffix == "gpu2.25a" and quarter.visible == "2"
    assert half and half.suffix == "gpu2.5b"
    assert pool.take("single", GpuRequest(1, 1), set()) is None  # waits for a whole GPU
    pool.release("dual")
    single = pool.take("single", GpuRequest(1, 1), set())
    assert single and single.gpus == ("0",)


def test_opportunistic_takes_up_to_max_free_gpus_at_least_min() -> None:
    pool = GpuPool([str(i) for i in range(8)])
    assert pool.take("quad", GpuRequest(4, 4), set()).gpus == ("0", "1", "2", "3")  # type: ignore[union-attr]
    assert pool.take("dual", GpuRequest(2, 2), set()).gpus == ("4", "5")  # type: ignore[union-attr]
    assert pool.take("opp", GpuRequest(1, 4), set()).gpus == ("6", "7")  # type: ignore[union-attr]
    assert pool.take("opp2", GpuRequest(1, 4), set()) is None


def test_a_share_goes_to_the_fullest_gpu_that_holds_it_and_never_past_one() -> None:
    pool = GpuPool(["0", "1"])
    pool.take("a", GpuRequest(share=4), {"1"})  # GPU 1 busy: a half of GPU 0
    b = pool.take("b", GpuRequest(share=2), set())
    assert b and b.gpus == ("0",)  # best fit: GPU 0 (half left), not the empty GPU 1
    assert pool.take("c", GpuRequest(share=4), {"1"}) is None  # 0.25 left on GPU 0
    assert pool.used("0") == 6


def test_sub_worker_names_carry_the_gpus_back() -> None:
    assert allocation_of("host:gpu0,1") == Allocation(("0", "1"))
    assert allocation_of("host:gpu2.25a") == Allocation(("2",), 2, "a")
    assert allocation_of("host:gpu3.125c") == Allocation(("3",), 1, "c")
    assert allocation_of("host:gpu0.1") == Allocation(("0.1",))  # a MIG device, whole
    assert allocation_of("host:service:abc") is None
    for allocation in (Allocation(("2",), 2, "a"), Allocation(("0", "1")), Allocation(("1",), 7, "b")):
        assert allocation_of("h:" + allocation.suffix) == allocation


def test_a_waiting_higher_queue_blocks_lower_ones_unless_backfilling() -> None:
    requests = {"dual": GpuRequest(2, 2), "single": GpuRequest(1, 1)}
    names = {"q-dual": "dual", "q-single": "single"}
    for backfill, expected in ((False, []), (True, ["q-single"])):
        dynamic = DynamicGpus(["0", "1"], requests, backfill)
        dynamic.bind(names)
        dynamic.pool.take("running", GpuRequest(1, 1), set())
        eligible, reason = dynamic.candidates(["q-dual", "q-single"], lambda q: True, set(), names)
        assert eligible == expected
        assert reason == "waiting: queue dual needs 2 GPUs, 1 GPU free"
    # an empty queue that does not fit blocks nothing
    eligible, reason = dynamic.candidates(["q-dual", "q-single"], lambda q: False, set(), names)
    assert eligible == ["q-single"] and reason is None


def _reading(index: int, *processes: tuple[int, float], total: float = 8192) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", "fake", total, 0, 0, 0, [GpuProcess(p, mb) for p, mb in processes])


def test_foreign_processes_make_a_gpu_busy_own_ones_do_not() -> None:
    readings = [_reading(0, (10, 3276.8)), _reading(1, (20, 5000)), _reading(2, (30, 100))]
    assert busy_gpus(readings, own_pids=[20], threshold_mb=1024) == {"0": "GPU 0 has 3.2 GiB used by pid 10"}
    assert busy_gpus(readings, own_pids=[], threshold_mb=1024, among=["1", "2"]) == {
        "1": "GPU 1 has 4.9 GiB used by pid 20"}


def test_watchdog_warns_at_90_percent_then_stops_after_the_grace() -> None:
    dog = GpuWatchdog(grace_sec=5)
    held = {"t": Allocation(("2",), 2, "a")}  # 0.25 of 8 GiB: 2 GiB
    owners = {101: "t", 102: "t"}
    assert dog.check(held, owners, [_reading(2, (101, 1000))], now=0) == []
    warned = dog.check(held, owners, [_reading(2, (101, 1000), (102, 900), (999, 5000))], now=1)
    assert [v.stop for v in warned] == [False] and "93%" in warned[0].message
    assert dog.check(held, owners, [_reading(2, (101, 3000))], now=2) == []  # over, within the grace
    stopped = dog.check(held, owners, [_reading(2, (101, 3000))], now=7.5)
    assert [(v.task_id, v.stop) for v in stopped] == [("t", True)]
    assert stopped[0].message == "GPU memory limit: used 2.9 GiB of the 2.0 GiB its 0.25 of GPU 2 allows"
    # back under its share in time: the clock starts again
    dog.check(held, owners, [_reading(2, (101, 3000))], now=10)
    dog.check(held, owners, [_reading(2, (101, 100))], now=14)
    assert dog.check(held, owners, [_reading(2, (101, 3000))], now=16) == []


def test_mps_settings_follow_the_fraction() -> None:
    quarter = Allocation(("2",), 2, "a")
    assert gpu_mps.mps_env(quarter, 81920, "/tmp/mps") == {
        "CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=20480M",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}
    assert gpu_mps.fraction_env(quarter) == {"CLEARML_AGENT_GPU_FRACTIONS": "0.25"}
    assert gpu_mps.mps_env(Allocation(("0",)), 81920, "/tmp/mps") == {}
    assert container_args.mps_flags({"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps"}, []) == [
        "-v", "/tmp/mps:/tmp/mps", "--ipc=host"]
    assert container_args.mps_flags({"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps"}, ["--ipc=private"]) == [
        "-v", "/tmp/mps:/tmp/mps"]
    assert container_args.mps_flags({}, []) == []


def test_mps_enforced_without_its_control_program_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="nvidia-cuda-mps-control is not on PATH") as caught:
        gpu_mps.ensure_control_daemon(["0"], "/tmp/mps")
    assert caught.value.hint and "enforce: watchdog" in caught.value.hint


def test_a_gpu_process_outside_the_executors_tree_is_the_task_its_environment_names() -> None:
    """In a container the task's processes hang under the engine, not the executor: CLEARML_TASK_ID says whose."""
    env = {**os.environ, "CLEARML_TASK_ID": "t1"}
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env) as inside:
        try:
            time.sleep(0.3)
            gone = 2**22 + 12345  # an executor pid that is no more: no tree to walk
            owners = task_of_pid({"t1": gone}, [inside.pid])
            assert owners == {inside.pid: "t1"}
            assert task_of_pid({"t2": gone}, [inside.pid]) == {}
            assert busy_gpus([_reading(0, (inside.pid, 4000))], owners, threshold_mb=1024) == {}
        finally:
            inside.kill()
