"""Masking secrets in a printed configuration, by the reference's `agent.sanitize_config_printout` rules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "****"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*:)[^/@\s]+(?=@)")
_ENV_FLAGS = ("-e", "--env")
_ENV_ARG = re.compile(r"(?P<head>(?:^|\s)(?:-e|--env)(?:\s+|=)[A-Za-z_][A-Za-z0-9_]*=)\S+")


def mask(data: dict[str, Any], rules: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with secrets replaced by ****; `rules` is agent.sanitize_config_printout."""

    def patterns(name: str) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in rules.get(name) or ()]

    keep, hide, hide_all, docker = (patterns(n) for n in
                                    ("dont_hide_secrets", "hide_secrets", "hide_secrets_recursive", "docker_commands"))

    def matches(pats: list[re.Pattern[str]], key: str) -> bool:
        return any(p.search(key) for p in pats)

    def walk(value: Any, key: str, hidden: bool) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k, hidden or matches(hide_all, k) or (matches(hide, k) and not matches(keep, k)))
                    for k, v in value.items()}
        if hidden and not matches(keep, key):
            return _mask_leaf(value)
        if matches(docker, key):
            value = _mask_docker_env(value)
        if isinstance(value, list):
            return [walk(v, key, hidden) for v in value]
        if isinstance(value, str):
            return mask_url_password(value)
        return value

    return walk(data, "", False)


def _mask_leaf(value: Any) -> Any:
    # Only text is secret; numbers and flags under a secret-sounding key (token_expiration_threshold_sec)
    # stay readable, and an empty string shows that nothing is set.
    if isinstance(value, list):
        return [_mask_leaf(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_leaf(v) for k, v in value.items()}
    if isinstance(value, str) and value:
        return MASK
    return value


def mask_url_password(text: str) -> str:
    """`https://user:pw@host` → `https://user:****@host`."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def _mask_docker_env(value: Any) -> Any:
    """Values of `-e NAME=value` in container arguments, given as one string or as a list of arguments."""
    if isinstance(value, str):
        return _ENV_ARG.sub(lambda m: m.group("head") + MASK, value)
    if isinstance(value, list):
        out = []
        for i, arg in enumerate(value):
            after_flag = i > 0 and value[i - 1] in _ENV_FLAGS
            if isinstance(arg, str) and after_flag and "=" in arg:
                arg = arg.split("=", 1)[0] + "=" + MASK
            elif isinstance(arg, str):
                arg = _mask_docker_env(arg)
            out.append(arg)
        return out
    return value
