"""Type checks of a layer of settings against the defaults: the defaults' value types are the schema.

HOCON and environment variables spell values loosely (`"10"`, `yes`), so values are converted to the
default's type where that is unambiguous, and refused otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

# on_error(dotted_key, value, expected) raises; the caller knows where the value came from
OnError = Callable[[str, Any, str], NoReturn]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def normalize(layer: dict[str, Any], defaults: dict[str, Any], on_error: OnError, prefix: str = "") -> dict[str, Any]:
    """`layer` with values converted to the types of `defaults`; keys the defaults lack are kept as they are
    (the SDK's sections, keys of newer agents). A null at a key with a default means "unset": it is dropped."""
    out: dict[str, Any] = {}
    for key, value in layer.items():
        path = prefix + key
        if key not in defaults:
            out[key] = value
            continue
        default = defaults[key]
        if value is None and default is not None:
            continue
        if isinstance(default, dict):
            if not isinstance(value, dict):
                on_error(path, value, "a section { ... }")
            out[key] = normalize(value, default, on_error, path + ".")
        else:
            out[key] = _coerce(path, value, default, on_error)
    return out


def _coerce(path: str, value: Any, default: Any, on_error: OnError) -> Any:
    if default is None:  # unset in the reference: any type goes
        return value
    if isinstance(default, bool):  # before int: bool is an int
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if not isinstance(value, (dict, list)) and text in _TRUE | _FALSE:
            return text in _TRUE
        on_error(path, value, "true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        on_error(path, value, "a whole number")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        on_error(path, value, "a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        on_error(path, value, "a string")
    if isinstance(default, list):
        if isinstance(value, (list, str)):  # some list keys take a plain string too (pip_version: "")
            return value
        on_error(path, value, "a list [ ... ]")
    return value
