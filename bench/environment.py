"""Environment benchmark: cold and warm set-up of a 10-package requirement set.

    python bench/environment.py [--runs 7] [--manager uv]

- cold: `build_environment` with an empty venv cache but a warm uv download cache (the wheels are fetched once
  before timing), so that the figure is Conveyor's overhead over uv, not the network;
- warm: the same call again, a venv cache hit;
- reference, measured in the same run and interleaved with the cold builds: a bare `uv venv` + `uv pip install -r`
  of the same set with the same uv cache and interpreter.

Each figure is the median over the runs with its spread (min–max) and its ratio to the reference's median.
Targets (issue 3): warm under 0.5 s; cold within 1.5x of the reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conveyor.config import load_config
from conveyor.env.managers.base import find_uv, installer_env
from conveyor.env.python import Requirements, agent_python, build_environment, freeze

# ten small pure-Python distributions, pinned, no dependencies among them beyond the set
PACKAGES = ["six==1.16.0", "idna==3.7", "packaging==24.1", "attrs==23.2.0", "click==8.1.7", "certifi==2024.7.4",
            "tomli==2.0.1", "typing-extensions==4.12.2", "zipp==3.19.2", "iniconfig==2.0.0"]
WARM_TARGET_SEC = 0.5
COLD_TARGET_RATIO = 1.5


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_uv(work: Path, name: str, reqs_file: Path, uv_env: dict[str, str]) -> None:
    """The reference: what a user would type, with nothing of Conveyor around it."""
    uv, (python, _) = find_uv(), agent_python()
    venv = work / name
    subprocess.run([uv, "venv", "--python", str(python), str(venv)], env=uv_env, check=True, capture_output=True)
    subprocess.run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "-r", str(reqs_file)],
                   env=uv_env, check=True, capture_output=True)


def config_for(work: Path, cache: Path, uv_cache: Path, manager: str):
    conf = work / f"{cache.name}.conf"
    conf.write_text(f"""agent {{
  venvs_dir: "{work}/venvs-builds"
  venvs_cache {{ path: "{cache}" }}
  package_manager {{ type: "{manager}", uv_cache_dir: "{uv_cache}" }}
}}
""")
    return load_config(conf, environ={})


def summary(name: str, values: list[float], reference: float | None) -> str:
    med = statistics.median(values)
    text = f"{name:<26} median {_fmt(med)}   spread {_fmt(min(values))} – {_fmt(max(values))}"
    if reference:
        text += f"   ratio to bare uv {med / reference:6.3f}x"
    return text


def _fmt(seconds: float) -> str:
    return f"{seconds:6.3f} s" if seconds >= 0.1 else f"{seconds * 1000:6.2f} ms"


def _quiet(line: str) -> None:
    pass


def one_run(run: int, work: Path, reqs_file: Path, uv_env: dict[str, str], uv_cache: Path,
            manager: str) -> tuple[float, float, float, float, float]:
    """(reference, cold, first freeze, warm, warm + freeze) seconds, each in a fresh venv cache."""
    cfg = config_for(work, work / f"venvs-cache-{run}", uv_cache, manager)
    reqs = Requirements(list(PACKAGES), "task")
    envs = []
    timings = {}
    steps = {"ref": lambda: bare_uv(work, f"ref-{run}", reqs_file, uv_env),
             "cold": lambda: envs.append(build_environment(reqs, cfg=cfg, log=_quiet))}
    for label in (["ref", "cold"] if run % 2 == 0 else ["cold", "ref"]):  # interleaved: no order bias
        timings[label] = timed(steps[label])
    cold_env = envs[0]
    first_freeze = timed(lambda: freeze(cold_env))  # uv pip freeze, then kept with the entry
    cold_env.release()
    assert not cold_env.hit and len(freeze(cold_env)) == len(PACKAGES), freeze(cold_env)

    def warm() -> None:
        env = build_environment(reqs, cfg=cfg, log=_quiet)
        assert env.hit
        env.release()

    def warm_and_freeze() -> None:
        with build_environment(reqs, cfg=cfg, log=_quiet) as env:
            freeze(env)

    return timings["ref"], timings["cold"], first_freeze, timed(warm), timed(warm_and_freeze)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--manager", default="uv", choices=["uv", "pip"])
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    os.environ.pop("UV_CACHE_DIR", None)
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-env-"))
    uv_cache = work / "uv-cache"
    reqs_file = work / "requirements.txt"
    reqs_file.write_text("\n".join(PACKAGES) + "\n")
    uv_env = installer_env({"UV_CACHE_DIR": str(uv_cache), "UV_PYTHON_DOWNLOADS": "never"})
    try:
        bare_uv(work, "prime", reqs_file, uv_env)  # downloads every wheel once: later runs measure no network
        rows = [one_run(run, work, reqs_file, uv_env, uv_cache, args.manager) for run in range(args.runs)]
        ref, cold, first_freeze, warm, warm_freeze = (list(column) for column in zip(*rows, strict=True))
        ref_med = statistics.median(ref)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"10 packages ({', '.join(PACKAGES)}), manager {args.manager}, {args.runs} runs, "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load:.1f} at the end")
        print(summary("bare uv venv+pip install", ref, None))
        print(summary("cold (empty venv cache)", cold, ref_med))
        print(summary("first freeze (uv)", first_freeze, ref_med))
        print(summary("warm (venv cache hit)", warm, ref_med))
        print(summary("warm + freeze (kept)", warm_freeze, ref_med))
        cold_ratio, warm_med = statistics.median(cold) / ref_med, statistics.median(warm)
        print(f"targets: warm < {WARM_TARGET_SEC} s: {'met' if warm_med < WARM_TARGET_SEC else 'MISSED'} "
              f"({_fmt(warm_med).strip()}); cold <= {COLD_TARGET_RATIO}x bare uv: "
              f"{'met' if cold_ratio <= COLD_TARGET_RATIO else 'MISSED'} ({cold_ratio:.2f}x)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
