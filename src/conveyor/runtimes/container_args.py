"""Container engine arguments: merging the agent's and the task's (clearml-agent.md §5.2), GPU flags, masking.

Arguments are handled in groups, a flag with its value (`-e FOO=bar`, `--ipc=host`, `-v a:b`), so that filters,
forbidden switches and protected collisions act on whole settings.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence

# docker/podman run flags that take no value: the token after them is a flag of its own, or the image
_BOOLEAN = {"--rm", "--init", "--privileged", "--read-only", "-i", "-t", "-d", "-it", "-ti", "--interactive", "--tty",
            "--detach", "--no-healthcheck", "--oom-kill-disable", "-P", "--publish-all", "-q", "--quiet",
            "--disable-content-trust", "--replace", "--rmi", "--no-hosts", "--read-only-tmpfs", "--sig-proxy"}
_SECRET_NAME = re.compile(r"(?i)pass|secret|token|key|auth|credential")
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*:)[^/@\s]+(?=@)")
MASK = "****"


def split_args(value: str | Sequence[str] | None) -> list[str]:
    """Arguments given as one string or a list (whose items may hold several, e.g. "-e A=1"), as argv tokens."""
    if not value:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    out: list[str] = []
    for item in value:
        item = str(item).strip()
        if item:
            out += shlex.split(item) if " " in item else [item]
    return out


def groups(args: Sequence[str]) -> list[list[str]]:
    """Tokens grouped as settings: a flag with its separate value, or a flag alone."""
    out: list[list[str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        takes_value = (token.startswith("-") and "=" not in token and token not in _BOOLEAN
                       and i + 1 < len(args) and not args[i + 1].startswith("-"))
        out.append([token, args[i + 1]] if takes_value else [token])
        i += 2 if takes_value else 1
    return out


def switch(group: Sequence[str]) -> str:
    """The flag's name without dashes or value: `--network=host` → network, `-e` → e."""
    return group[0].lstrip("-").split("=", 1)[0]


def merge(agent: Sequence[str], task: Sequence[str], *, filters: Iterable[str] = (), forbidden: Iterable[str] = (),
          protected: Iterable[str] = (), agent_first: bool = True) -> list[str]:
    """The agent's arguments, then the task's: the task's kept only when they match one of `filters` (regexes;
    none = all), `forbidden` switches dropped from both, and when both set a `protected` switch, the agent's wins
    (`agent_first`) or the task's."""
    patterns = [re.compile(p) for p in filters]
    banned = {f.lstrip("-") for f in forbidden}
    mine = [g for g in groups(agent) if switch(g) not in banned]
    theirs = [g for g in groups(task) if switch(g) not in banned
              and (not patterns or any(p.search(" ".join(g)) for p in patterns))]
    guarded = {p.lstrip("-") for p in protected}
    clash = {switch(g) for g in mine if switch(g) in guarded} & {switch(g) for g in theirs}
    if agent_first:
        theirs = [g for g in theirs if switch(g) not in clash]
    else:
        mine = [g for g in mine if switch(g) not in clash]
    return [token for group in mine + theirs for token in group]


def sets(args: Sequence[str], *names: str) -> bool:
    return any(switch(g) in names for g in groups(args))


def gpu_flags(engine: str, gpus: str | None) -> list[str]:
    """The engine's flags for NVIDIA_VISIBLE_DEVICES-style `gpus`: "all", "0,1" (MIG "0.1" → "0:1"), or
    None/"none" for no GPU. Docker: --gpus; Podman: CDI devices."""
    if not gpus or gpus == "none":
        return []
    devices = [d.strip().replace(".", ":") for d in gpus.split(",") if d.strip()]
    if engine == "podman":
        return [arg for d in (["all"] if gpus == "all" else devices) for arg in ("--device", f"nvidia.com/gpu={d}")]
    if gpus == "all":
        return ["--gpus", "all"]
    # docker reads --gpus as CSV: the quotes keep "device=0,1" one field
    return ["--gpus", f'"device={",".join(devices)}"']


def mps_flags(env: Mapping[str, str], args: Sequence[str]) -> list[str]:
    """A task that runs as an NVIDIA MPS client (its env names the MPS pipe directory) needs the control daemon's
    pipes and the host's IPC namespace."""
    pipes = env.get("CUDA_MPS_PIPE_DIRECTORY")
    if not pipes:
        return []
    return ["-v", f"{pipes}:{pipes}", *([] if sets(args, "ipc") else ["--ipc=host"])]


def mask(argv: Sequence[str], extra_keys: Iterable[str] = ()) -> list[str]:
    """argv for printing: values of secret-looking `-e NAME=value` replaced, passwords in URLs replaced."""
    extra = set(extra_keys)
    out: list[str] = []
    for i, token in enumerate(argv):
        env = token if i > 0 and argv[i - 1] in ("-e", "--env") else None
        if token.startswith("--env="):
            env = token[len("--env="):]
        if env and "=" in env:
            name = env.split("=", 1)[0]
            if _SECRET_NAME.search(name) or name in extra:
                token = token[: len(token) - len(env)] + f"{name}={MASK}"
        out.append(_URL_PASSWORD.sub(lambda m: m.group("head") + MASK, token))
    return out


HOST_MOUNT_ENV = ("CLEARML_AGENT_K8S_HOST_MOUNT", "CLEARML_AGENT_DOCKER_HOST_MOUNT")


def host_mounts(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(host folder, the agent's own view of it) from CLEARML_AGENT_K8S_HOST_MOUNT (or ..._DOCKER_HOST_MOUNT):
    `/host/path:/pod/path`, several separated by commas. Set for an agent that runs in a pod (or a container) and
    starts task containers on the node's engine: the engine sees the node's paths, not the pod's."""
    value = next((environ[name] for name in HOST_MOUNT_ENV if environ.get(name)), "")
    pairs = []
    for part in value.split(","):
        host, sep, inside = part.strip().partition(":")
        if sep and host.startswith("/") and inside.startswith("/"):
            pairs.append((host.rstrip("/") or "/", inside.rstrip("/") or "/"))
    return pairs


def to_host_paths(argv: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """`argv` with the source of each `-v SRC:DST[:MODE]` moved from the agent's view to the node's."""
    out = list(argv)
    for i in range(1, len(out)):
        if out[i - 1] in ("-v", "--volume"):
            source, sep, rest = out[i].partition(":")
            for host, inside in pairs:
                if source == inside or source.startswith(inside + "/"):
                    out[i] = host + source[len(inside):] + sep + rest
                    break
    return out
