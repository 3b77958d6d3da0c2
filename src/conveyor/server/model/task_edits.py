"""What an edit of a task may hold: the shapes of hyper-parameters, configuration items, the container and the script,
checked before anything is stored, with an error that says which entry is wrong and how.

Pure functions over JSON values; the `tasks` service applies what they return."""

from __future__ import annotations

from typing import Any

from conveyor.protocol import errors

DEFAULT_SECTION = "General"  # where a parameter with no section goes, as the reference server puts it
PARAM_KEYS = ("section", "name", "value", "type", "description")
CONFIG_KEYS = ("name", "value", "type", "description")
CONTAINER_KEYS = ("image", "arguments", "setup_shell_script")
SCRIPT_TEXT_KEYS = ("binary", "repository", "tag", "branch", "version_num", "entry_point", "working_dir", "diff")
REPLACE_MODES = ("none", "section", "all")


def _invalid(message: str) -> errors.ApiError:
    return errors.validation_error(f"Validation error: {message}")


def _text(value: Any) -> str:
    """A value as the reference stores it: text ("" for null; numbers and booleans as JSON writes them)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise _invalid(f"value {value!r} must be a string, a number or a boolean")


def _known_keys(item: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """Refuse fields an item cannot hold, rather than store the item without them (data lost without a word)."""
    unknown = sorted(str(key) for key in item if key not in allowed)
    if unknown:
        raise _invalid(f"{what}: unknown field(s) {', '.join(map(repr, unknown))}; an entry holds only "
                       f"{', '.join(allowed)}")


def _optional_str(item: dict[str, Any], key: str, what: str) -> str:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"{what}: '{key}' must be a string")
    return value or ""


def param_entry(item: Any, *, section: str | None = None) -> dict[str, str]:
    """One hyper-parameter as stored: {section, name, value, type, description}, all text."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise _invalid(f"each hyper-parameter needs a non-empty string 'name' (got {item!r})")
    name = item["name"]
    what = f"hyper-parameter {name!r}"
    _known_keys(item, PARAM_KEYS, what)
    sec = section if section is not None else (_optional_str(item, "section", what) or DEFAULT_SECTION)
    try:
        value = _text(item.get("value"))
    except errors.ApiError:
        raise _invalid(f"{what}: 'value' must be a string, a number or a boolean") from None
    return {"section": sec, "name": name, "value": value, "type": _optional_str(item, "type", what),
            "description": _optional_str(item, "description", what)}


def param_items(items: Any) -> list[dict[str, str]]:
    """The `hyperparams` list of tasks.edit_hyper_params."""
    if not isinstance(items, list):
        raise _invalid("'hyperparams' must be a list of {section, name, value, type, description}")
    return [param_entry(item) for item in items]


def param_keys(items: Any) -> list[tuple[str, str | None]]:
    """The `hyperparams` list of tasks.delete_hyper_params: (section, name or None for the whole section)."""
    if not isinstance(items, list):
        raise _invalid("'hyperparams' must be a list of {section, name}")
    keys = []
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), (str, type(None)))
                                                 for k in ("section", "name")):
            raise _invalid("each hyper-parameter to delete is an object with a string 'section' and an optional "
                           "string 'name' (no name: the whole section)")
        keys.append((item.get("section") or DEFAULT_SECTION, item.get("name") or None))
    return keys


def hyperparams_field(value: Any) -> dict[str, dict[str, dict[str, str]]]:
    """The `hyperparams` object of tasks.create/edit: {section: {name: param}}; each entry's section and name are
    the keys it is stored under."""
    if not isinstance(value, dict):
        raise _invalid("'hyperparams' must be an object {section: {name: {value, type, description}}}")
    checked: dict[str, dict[str, dict[str, str]]] = {}
    for section, params in value.items():
        if not isinstance(params, dict):
            raise _invalid(f"hyper-parameter section {section!r} must be an object {{name: {{value, …}}}}")
        entries = {}
        for name, param in params.items():
            if not isinstance(param, dict):
                raise _invalid(f"hyper-parameter {section}/{name} must be an object {{value, type, description}}")
            entries[name] = param_entry({**param, "name": name}, section=section)
        checked[section] = entries
    return checked


def config_entry(item: Any) -> dict[str, str]:
    """One configuration item as stored: {name, value, type, description}, all text."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
        raise _invalid(f"each configuration item needs a non-empty string 'name' (got {item!r})")
    what = f"configuration item {item['name']!r}"
    _known_keys(item, CONFIG_KEYS, what)
    entry = {key: _optional_str(item, key, what) for key in CONFIG_KEYS if key != "value"}
    value = item.get("value")
    if value is not None and not isinstance(value, str):
        raise _invalid(f"{what}: 'value' must be a string (the configuration's text)")
    return {"name": item["name"], "value": value or "", "type": entry["type"], "description": entry["description"]}


def config_items(items: Any) -> list[dict[str, str]]:
    """The `configuration` list of tasks.edit_configuration."""
    if not isinstance(items, list):
        raise _invalid("'configuration' must be a list of {name, value, type, description}")
    return [config_entry(item) for item in items]


def configuration_field(value: Any) -> dict[str, dict[str, str]]:
    """The `configuration` object of tasks.create/edit: {name: item}."""
    if not isinstance(value, dict):
        raise _invalid("'configuration' must be an object {name: {value, type, description}}")
    checked = {}
    for name, item in value.items():
        if not isinstance(item, dict):
            raise _invalid(f"configuration item {name!r} must be an object {{value, type, description}}")
        checked[name] = config_entry({**item, "name": name})
    return checked


def container_field(value: Any) -> dict[str, str]:
    """`container`: {image, arguments, setup_shell_script}, each text."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("'container' must be an object {image, arguments, setup_shell_script}")
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            raise _invalid(f"container '{key}' must be a string")
    return {key: item or "" for key, item in value.items()}


def script_field(value: Any) -> dict[str, Any]:
    """`script` (a part of it: tasks.edit merges it key by key): text fields, `requirements` an object of text or
    lists of text."""
    if not isinstance(value, dict):
        raise _invalid("'script' must be an object {repository, branch, version_num, entry_point, working_dir, …}")
    for key in SCRIPT_TEXT_KEYS:
        if value.get(key) is not None and not isinstance(value[key], str):
            raise _invalid(f"script '{key}' must be a string")
    if value.get("requirements") is not None:
        requirements_field(value["requirements"], "script 'requirements'")
    return value


def requirements_field(value: Any, what: str = "'requirements'") -> dict[str, Any]:
    """`script.requirements`: {"pip": text or list of lines, "conda": …, "org_pip": …}."""
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be an object such as {{\"pip\": \"numpy==1.26.4\\ntorch\\n\"}}")
    for key, item in value.items():
        lines = item if isinstance(item, list) else [item]
        if not all(line is None or isinstance(line, str) for line in lines):
            raise _invalid(f"{what} '{key}' must be text (one requirement a line) or a list of strings")
    return value


def replace_mode(value: Any) -> str:
    if value is None:
        return "none"
    if value not in REPLACE_MODES:
        raise _invalid(f"'replace_hyperparams' must be one of {', '.join(REPLACE_MODES)} (got {value!r})")
    return str(value)
