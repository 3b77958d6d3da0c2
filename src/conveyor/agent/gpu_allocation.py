"""Dynamic GPU allocation (`--dynamic-gpus`, clearml-agent.md §6): which GPUs a daemon may hand out, what each queue
asks for (`quad=4`, `opportunistic=1-4`, `quarter=0.25`), and which GPUs (or which share of one) each running task
holds. A task's GPUs are written into its sub-worker id (`<name>:gpu0,1`, `<name>:gpu2.25a`), as the reference
does, so a restarted daemon reads them back from its run records and books nothing twice.

Shares are counted in eighths of a GPU: fractions come in steps of 0.125, and integers add up exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from conveyor.errors import UserError

log = logging.getLogger(__name__)

EIGHTHS = 8  # one whole GPU
_QUEUE_SPEC_HINT = ("write NAME=N (N whole GPUs), NAME=MIN-MAX (whole GPUs, e.g. 1-4) or NAME=F "
                    "(a fraction of one GPU in steps of 0.125: 0.125 ... 0.875)")
_GPU_ID = re.compile(r"^\d+([.:]\d+)?$")
_WHOLE_SUFFIX = re.compile(r"^gpu(?P<ids>\d+(?:\.\d+)?(?:,\d+(?:\.\d+)?)*)$")
_SHARE_SUFFIX = re.compile(r"^gpu(?P<id>\d+(?:\.\d+)?)\.(?P<digits>\d+)(?P<slice>[a-z])$")


@dataclass(frozen=True)
class GpuRequest:
    """What one queue's tasks get: between `min` and `max` whole GPUs, or `share` eighths of one GPU."""

    min: int = 0
    max: int = 0
    share: int = 0  # eighths of one GPU; 0 for whole GPUs

    def __str__(self) -> str:
        if self.share:
            return f"{self.share / EIGHTHS:g} of a GPU"
        count = str(self.min) if self.min == self.max else f"{self.min} to {self.max}"
        return f"{count} GPU{'s' if self.max > 1 else ''}"


@dataclass(frozen=True)
class Allocation:
    """The GPUs one task holds: whole ones, or a share (with a slice letter) of one."""

    gpus: tuple[str, ...]
    share: int = 0
    slice: str = ""

    @property
    def suffix(self) -> str:
        """The sub-worker id's last part: `gpu0,1` or `gpu2.25a` (0.25 of GPU 2, slice a)."""
        if self.share:
            digits = f"{self.share / EIGHTHS:.3f}".split(".")[1].rstrip("0")
            return f"gpu{self.gpus[0]}.{digits}{self.slice}"
        return "gpu" + ",".join(self.gpus)

    @property
    def visible(self) -> str:
        """NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES: MIG devices as `0:1`, as the NVIDIA runtime names them."""
        return ",".join(g.replace(".", ":") for g in self.gpus)

    @property
    def fraction(self) -> float:
        return self.share / EIGHTHS if self.share else float(len(self.gpus))


def parse_gpu_ids(spec: str) -> list[str]:
    """`--gpus` for dynamic allocation: a range `0-7` or a list `0,2,3`; MIG devices `0:1` (or `0.1`)."""
    spec = spec.strip()
    range_match = re.fullmatch(r"(\d+)-(\d+)", spec)
    if range_match:
        first, last = int(range_match[1]), int(range_match[2])
        if first > last:
            raise UserError(f"--gpus {spec}: the range runs backwards", hint="write it low to high, e.g. 0-3")
        return [str(i) for i in range(first, last + 1)]
    ids = [part.strip().replace(":", ".") for part in spec.split(",")]
    if not spec or not all(_GPU_ID.match(i) for i in ids):
        raise UserError(f"--gpus {spec!r}: not a GPU list",
                        hint="with --dynamic-gpus write a range (0-7), a list (0,2,3) or MIG devices (0:0,0:1)")
    if len(set(ids)) != len(ids):
        raise UserError(f"--gpus {spec}: a GPU is listed twice")
    return ids


def parse_queue_spec(spec: str) -> tuple[str, GpuRequest]:
    """`name=4`, `name=1-4`, `name=0.25` (--dynamic-gpus's --queue entries)."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UserError(f"--queue {spec!r}: with --dynamic-gpus each queue says how many GPUs its tasks get",
                        hint=_QUEUE_SPEC_HINT)
    value = value.strip()
    whole_range = re.fullmatch(r"(\d+)-(\d+)", value)
    if whole_range:
        low, high = int(whole_range[1]), int(whole_range[2])
        if not 1 <= low <= high:
            raise UserError(f"--queue {spec}: the range must run from at least 1 up", hint=_QUEUE_SPEC_HINT)
        return name.strip(), GpuRequest(low, high)
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"--queue {spec!r}: {value!r} is not a number of GPUs", hint=_QUEUE_SPEC_HINT) from None
    if number >= 1:
        if number != int(number):
            raise UserError(f"--queue {spec}: more than one GPU must be a whole number", hint=_QUEUE_SPEC_HINT)
        return name.strip(), GpuRequest(int(number), int(number))
    eighths = number * EIGHTHS
    if number <= 0 or eighths != int(eighths):
        raise UserError(f"--queue {spec}: a fraction of a GPU must be a step of 0.125 above 0", hint=_QUEUE_SPEC_HINT)
    return name.strip(), GpuRequest(share=int(eighths))


def dynamic_queues(specs: list[str], gpus: str | None, services_mode: int | None) -> tuple[list[str],
                                                                                       dict[str, GpuRequest]]:
    """`--dynamic-gpus --gpus 0-7 --queue quad=4 dual=2`: the queue names in priority order and what each gets."""
    if not gpus:
        raise UserError("--dynamic-gpus needs --gpus: the GPUs to share, e.g. --gpus 0-7")
    if services_mode is not None:
        raise UserError("--dynamic-gpus runs tasks side by side already; leave out --services-mode")
    if not specs:
        raise UserError("--dynamic-gpus needs --queue NAME=N ...", hint=_QUEUE_SPEC_HINT)
    parse_gpu_ids(gpus)  # a malformed list fails here, before anything starts
    parsed = [parse_queue_spec(spec) for spec in specs]
    return [name for name, _ in parsed], dict(parsed)


def allocation_of(sub_worker: str) -> Allocation | None:
    """The GPUs a sub-worker id names (`host:gpu0,1`, `host:gpu2.25a`), or None if it names none."""
    suffix = sub_worker.rsplit(":", 1)[-1]
    share = _SHARE_SUFFIX.match(suffix)
    if share:
        eighths = round(float("0." + share["digits"]) * EIGHTHS)
        return Allocation((share["id"],), eighths, share["slice"])
    whole = _WHOLE_SUFFIX.match(suffix)
    return Allocation(tuple(whole["ids"].split(","))) if whole else None


class GpuPool:
    """The daemon's GPUs and who holds what. Whole GPUs go in index order; a share goes to the GPU with the least
    room that still holds it (best fit), so that whole GPUs stay free for whole-GPU queues."""

    def __init__(self, gpus: Iterable[str]):
        self.gpus = list(gpus)
        self.held: dict[str, Allocation] = {}  # task id -> its GPUs

    def used(self, gpu: str) -> int:
        """Eighths of `gpu` held by tasks."""
        return sum(a.share or EIGHTHS for a in self.held.values() if gpu in a.gpus)

    def whole_free(self, unavailable: set[str]) -> list[str]:
        return [g for g in self.gpus if g not in unavailable and self.used(g) == 0]

    def fits(self, request: GpuRequest, unavailable: set[str]) -> bool:
        if request.share:
            return any(EIGHTHS - self.used(g) >= request.share for g in self.gpus if g not in unavailable)
        return len(self.whole_free(unavailable)) >= request.min

    def take(self, task_id: str, request: GpuRequest, unavailable: set[str]) -> Allocation | None:
        if request.share:
            room = [(EIGHTHS - self.used(g), g) for g in self.gpus if g not in unavailable]
            fitting = sorted((r, self.gpus.index(g), g) for r, g in room if r >= request.share)
            if not fitting:
                return None
            gpu = fitting[0][2]
            taken = {a.slice for a in self.held.values() if a.share and a.gpus == (gpu,)}
            letter = next(c for c in "abcdefgh" if c not in taken)  # at most 8 shares of one GPU
            allocation = Allocation((gpu,), request.share, letter)
        else:
            free = self.whole_free(unavailable)
            if len(free) < request.min:
                return None
            allocation = Allocation(tuple(free[:request.max]))
        self.held[task_id] = allocation
        return allocation

    def hold(self, task_id: str, allocation: Allocation) -> None:
        """A task a previous daemon started (adopted): its GPUs stay booked."""
        self.held[task_id] = allocation

    def release(self, task_id: str) -> None:
        self.held.pop(task_id, None)

    def describe_free(self, unavailable: set[str]) -> str:
        whole = len(self.whole_free(unavailable))
        best = max((EIGHTHS - self.used(g) for g in self.gpus if g not in unavailable), default=0)
        if whole:
            return f"{whole} GPU{'s' if whole > 1 else ''} free"
        return f"at most {best / EIGHTHS:g} of a GPU free" if best else "no GPU free"


class DynamicGpus:
    """Which queues a daemon may pull from now, given its GPUs. In priority order, a queue whose request does not fit
    and that has a task waiting blocks the queues after it (the reference's head-of-line blocking), unless
    `backfill` lets lower queues take what is free meanwhile."""

    def __init__(self, gpus: list[str], requests: dict[str, GpuRequest], backfill: bool):
        self.pool = GpuPool(gpus)
        self.by_name = requests
        self.by_queue: dict[str, GpuRequest] = {}
        self.backfill = backfill

    def bind(self, queue_names: dict[str, str]) -> None:
        """Queue ids, once resolved: id -> name."""
        lowered = {name.lower(): request for name, request in self.by_name.items()}
        self.by_queue = {qid: lowered.get(name.lower()) or self.by_name[qid] for qid, name in queue_names.items()}

    def candidates(self, order: list[str], has_waiting: Callable[[str], bool], unavailable: set[str],
                   names: dict[str, str]) -> tuple[list[str], str | None]:
        """Queues to pull from now, in `order`, and why the daemon waits for GPUs (None when it does not)."""
        eligible: list[str] = []
        reason: str | None = None
        for queue_id in order:
            request = self.by_queue[queue_id]
            if self.pool.fits(request, unavailable):
                eligible.append(queue_id)
                continue
            if reason is not None or not has_waiting(queue_id):
                continue
            reason = (f"waiting: queue {names.get(queue_id, queue_id)} needs {request}, "
                      f"{self.pool.describe_free(unavailable)}")
            if not self.backfill:
                break
        return eligible, reason
