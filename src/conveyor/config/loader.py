"""Loading the configuration: defaults.conf ← clearml.conf ← named CLEARML_* variables ← dynamic overrides.

Dynamic overrides are `CLEARML_AGENT__<PATH>` (e.g. `CLEARML_AGENT__AGENT__PACKAGE_MANAGER__TYPE=pip`) and
`CONVEYOR__<PATH>` (→ `conveyor.<path>`): `__` separates levels, the path is lower-cased, and the value is
read as JSON when it parses (`true`, `5`, `["a"]`), else as a string (clearml-agent.md 9.1).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import conveyor.config.hocon as hocon
from conveyor.config.errors import ConfigError
from conveyor.config.model import Config
from conveyor.config.schema import OnError, normalize

DEFAULTS_FILE = Path(__file__).with_name("defaults.conf")
FILE_HINT = "fix the file or point CLEARML_CONFIG_FILE elsewhere"

# Named variables (clearml-agent.md 9.4). Each also has a legacy TRAINS_* spelling, which CLEARML_* beats.
ENV_KEYS: dict[str, str] = {
    "CLEARML_API_HOST": "api.api_server",
    "CLEARML_WEB_HOST": "api.web_server",
    "CLEARML_FILES_HOST": "api.files_server",
    "CLEARML_API_ACCESS_KEY": "api.credentials.access_key",
    "CLEARML_API_SECRET_KEY": "api.credentials.secret_key",
    "CLEARML_API_HOST_VERIFY_CERT": "api.verify_certificate",
    "CLEARML_API_DEFAULT_REQ_METHOD": "api.http.default_method",
    "CLEARML_WORKER_ID": "agent.worker_id",
    "CLEARML_WORKER_NAME": "agent.worker_name",
    "CLEARML_AGENT_GIT_USER": "agent.git_user",
    "CLEARML_AGENT_GIT_PASS": "agent.git_pass",
    "CLEARML_AGENT_GIT_HOST": "agent.git_host",
    "CLEARML_AGENT_VENV_CACHE_PATH": "agent.venvs_cache.path",
}
CONFIG_FILE_VARS = ("CLEARML_CONFIG_FILE", "TRAINS_CONFIG_FILE")
DEFAULT_FILE_NAMES = ("clearml.conf", "trains.conf")
# prefix → the path the rest of the name is put under
OVERRIDE_PREFIXES: dict[str, str] = {"CLEARML_AGENT__": "", "TRAINS_AGENT__": "", "CONVEYOR__": "conveyor."}


@functools.lru_cache(maxsize=1)
def _default_settings() -> dict[str, Any]:
    text = DEFAULTS_FILE.read_text(encoding="utf-8")
    return hocon.parse(text, source=str(DEFAULTS_FILE), hint="the installed package is broken; reinstall it",
                       cache_slot="defaults", environ=os.environ)


def defaults() -> Config:
    """The built-in defaults alone (what a setting is when nobody set it)."""
    return Config(copy.deepcopy(_default_settings()))


def load_config(config_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The merged configuration. The file is `config_file`, else $CLEARML_CONFIG_FILE, else ~/clearml.conf;
    a missing ~/clearml.conf is fine, a missing file that was named is a ConfigError."""
    env = os.environ if environ is None else environ
    base = _default_settings()
    data = copy.deepcopy(base)
    path = _find_file(config_file, env)
    if path is not None:
        data = _merge(data, _read_file(path, base, env))
    data = _merge(data, _named_env_layer(base, env))
    data = _merge(data, _override_layer(base, env))
    return Config(data, path)


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def display_path(path: Path, env: Mapping[str, str] | None = None) -> str:
    """A path as the user would write it: under the home folder as ~/..."""
    home = _home(os.environ if env is None else env)
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def _find_file(config_file: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    named: tuple[Path, str] | None = None
    if config_file is not None:
        named = (Path(os.path.expanduser(os.fspath(config_file))), "check the path given")
    else:
        for var in CONFIG_FILE_VARS:
            if env.get(var):
                named = (Path(os.path.expanduser(env[var])), f"fix or unset {var}")
                break
    if named is not None:
        path, fix = named
        if not path.is_file():
            what = "no such file" if not path.exists() else "not a file"
            raise ConfigError(f"Config file {display_path(path, env)}: {what} — {fix}", source=display_path(path, env))
        return path
    for name in DEFAULT_FILE_NAMES:
        path = _home(env) / name
        if path.is_file():
            return path
    return None


def _read_file(path: Path, base: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    source = display_path(path, env)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text — {FILE_HINT}", source=source) from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc}) — {FILE_HINT}", source=source) from None
    slot = "file-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    layer = hocon.parse(text, source=source, hint=FILE_HINT, cache_slot=slot, environ=env, basedir=str(path.parent))

    def on_error(key: str, value: Any, expected: str) -> NoReturn:
        line = _line_of(text, key)
        where = f"{source}, line {line}" if line else source
        raise ConfigError(f"{where}: {key} must be {expected}, not {_show(value)} — {FILE_HINT}",
                          source=source, line=line, key=key)

    return normalize(layer, base, on_error)


def _line_of(text: str, key: str) -> int | None:
    """Best effort: the one line that sets the key's last part (None when there are none or several)."""
    leaf = re.escape(key.rsplit(".", 1)[-1])
    pattern = re.compile(rf'(?:^|[\s{{,."]){leaf}"?\s*[:={{]')
    hits = [n for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return hits[0] if len(hits) == 1 else None


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict) else "a section"


def _env_error(var: str) -> OnError:
    def on_error(key: str, value: Any, expected: str) -> NoReturn:
        raise ConfigError(f"Environment variable {var}: {key} must be {expected}, not {_show(value)} — "
                          f"fix or unset {var}", source=var, key=key)
    return on_error


def _named_env_layer(base: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for var, key in ENV_KEYS.items():
        legacy = "TRAINS_" + var.removeprefix("CLEARML_")
        for name in (legacy, var):  # CLEARML_* applied last, so it wins
            if env.get(name):  # an empty variable counts as unset, as in the reference
                layer = _merge(layer, normalize(_nest(key, env[name]), base, _env_error(name)))
    return layer


def _override_layer(base: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for var in sorted(env):  # sorted: a section (A__B) is applied before its keys (A__B__C)
        for prefix, under in OVERRIDE_PREFIXES.items():
            if not var.startswith(prefix):
                continue
            parts = var[len(prefix):].lower().split("__")
            if not all(parts):  # e.g. CLEARML_AGENT__ alone, or ___: not a path
                break
            layer = _merge(layer, normalize(_nest(under + ".".join(parts), _parse_value(env[var])), base,
                                            _env_error(var)))
            break
    return layer


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: sections merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
