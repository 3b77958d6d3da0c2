"""conveyor.config: defaults, the file, CLEARML_* variables and overrides, errors, masking, writing."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from pyhocon import ConfigFactory

from conveyor.config import (
    DEFAULTS_FILE,
    Config,
    ConfigError,
    ConfigKeyError,
    defaults,
    hocon,
    load_config,
    write_api_section,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path, tmp_path: Path) -> dict[str, str]:
    """A scratch environment: no real ~/clearml.conf, no real cache."""
    return {"HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- defaults --------------------------------------------------------------------------------------------


def test_defaults_alone(env):
    cfg = load_config(environ=env)
    assert cfg.path is None
    assert cfg.api_host == "http://127.0.0.1:8008"
    assert cfg.web_host == "http://127.0.0.1:8080"
    assert cfg.files_host == "http://127.0.0.1:8081"
    assert (cfg.access_key, cfg.secret_key) == ("", "")
    assert cfg.get("agent.package_manager.type") == "uv"
    assert cfg.get("agent.kill_grace_sec") == 10
    assert cfg.get("agent.venvs_cache.free_space_threshold_gb") == 2.0
    assert cfg.get("agent.git_pass") is None
    assert cfg.get("conveyor.server").items() >= {
        "host": "127.0.0.1", "port": 8008, "data_dir": "~/.conveyor", "db": "", "worker_timeout_sec": 600,
        "long_poll_max_sec": 30, "worker_stats_history": 1000,
    }.items()
    assert cfg.get("api.auth.token_expiration_threshold_sec") == 43200


def test_every_default_has_a_comment():
    lines = DEFAULTS_FILE.read_text().splitlines()
    uncommented = []
    for n, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w-]*\s*[:=]", line):  # a value, not a section opener
            previous = next((p.strip() for p in reversed(lines[:n]) if p.strip()), "")
            if not previous.startswith("#"):
                uncommented.append(line.strip())
    assert uncommented == []


def test_defaults_is_the_same_as_a_fresh_parse():
    fresh = ConfigFactory.parse_file(str(DEFAULTS_FILE)).as_plain_ordered_dict()
    assert defaults().as_dict(masked=False) == json.loads(json.dumps(fresh))


# -- layering --------------------------------------------------------------------------------------------


def test_file_then_named_variables_then_overrides(env, home):
    write(home / "clearml.conf", """
        api {
          api_server: "http://files-value:8008/"
          web_server: "http://web-from-file"
          credentials { access_key: "FILEKEY", secret_key: "FILESECRET" }
        }
        agent.package_manager { type: conda }
        agent.worker_name: from-file
    """)
    cfg = load_config(environ=env)
    assert cfg.path == home / "clearml.conf"
    assert cfg.api_host == "http://files-value:8008"  # trailing slash dropped
    assert cfg.access_key == "FILEKEY"
    assert cfg.get("agent.package_manager.type") == "conda"
    # the file's section merges into the defaults' one instead of replacing it
    assert cfg.get("agent.package_manager.system_site_packages") is False
    assert cfg.get("agent.package_manager.pip_version")[0].startswith("<20.2")

    env.update(CLEARML_API_HOST="http://from-env:1", CLEARML_API_SECRET_KEY="ENVSECRET",
               CLEARML_WORKER_NAME="env-worker")
    cfg = load_config(environ=env)
    assert cfg.api_host == "http://from-env:1"
    assert cfg.secret_key == "ENVSECRET"
    assert cfg.access_key == "FILEKEY"
    assert cfg.web_host == "http://web-from-file"
    assert cfg.get("agent.worker_name") == "env-worker"

    env["CLEARML_AGENT__API__API_SERVER"] = "http://from-override:2"
    env["CLEARML_AGENT__AGENT__WORKER_NAME"] = "override-worker"
    cfg = load_config(environ=env)
    assert cfg.api_host == "http://from-override:2"
    assert cfg.get("agent.worker_name") == "override-worker"


def test_legacy_trains_names_lose_to_clearml_ones(env):
    env["TRAINS_API_HOST"] = "http://trains:1"
    assert load_config(environ=env).api_host == "http://trains:1"
    env["CLEARML_API_HOST"] = "http://clearml:2"
    assert load_config(environ=env).api_host == "http://clearml:2"


def test_empty_named_variable_counts_as_unset(env):
    env["CLEARML_API_HOST"] = ""
    assert load_config(environ=env).api_host == "http://127.0.0.1:8008"


def test_file_choice(env, home, tmp_path):
    write(home / "clearml.conf", 'agent.worker_name: "home"')
    via_env = write(tmp_path / "env.conf", 'agent.worker_name: "env"')
    explicit = write(tmp_path / "explicit.conf", 'agent.worker_name: "explicit"')
    assert load_config(environ=env).get("agent.worker_name") == "home"
    env["CLEARML_CONFIG_FILE"] = str(via_env)
    assert load_config(environ=env).get("agent.worker_name") == "env"
    cfg = load_config(explicit, environ=env)
    assert cfg.get("agent.worker_name") == "explicit"
    assert cfg.path == explicit


def test_trains_conf_is_read_when_there_is_no_clearml_conf(env, home):
    write(home / "trains.conf", 'agent.worker_name: "old"')
    assert load_config(environ=env).get("agent.worker_name") == "old"


def test_missing_named_files_are_errors(env, tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.conf: no such file — check the path given"):
        load_config(tmp_path / "nope.conf", environ=env)
    env["CLEARML_CONFIG_FILE"] = str(tmp_path / "gone.conf")
    with pytest.raises(ConfigError, match=r"gone\.conf: no such file — fix or unset CLEARML_CONFIG_FILE"):
        load_config(environ=env)


def test_a_directory_is_not_a_file(env, tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        load_config(tmp_path, environ=env)


def test_null_in_the_file_keeps_the_default(env, home):
    write(home / "clearml.conf", "agent.kill_grace_sec: null\nagent.git_user: null")
    cfg = load_config(environ=env)
    assert cfg.get("agent.kill_grace_sec") == 10
    assert cfg.get("agent.git_user") is None


def test_unknown_keys_are_kept(env, home):
    write(home / "clearml.conf", "sdk { development { worker { report_period_sec: 2 } } }")
    assert load_config(environ=env).get("sdk.development.worker.report_period_sec") == 2


# -- dynamic overrides -----------------------------------------------------------------------------------


def test_overrides_parse_json_values(env):
    env.update({
        "CLEARML_AGENT__AGENT__PACKAGE_MANAGER__TYPE": "pip",
        "CLEARML_AGENT__AGENT__DOCKER_FORCE_PULL": "true",
        "CLEARML_AGENT__AGENT__EXTRA_DOCKER_ARGUMENTS": '["--ipc=host", "-e", "A=1"]',
        "CLEARML_AGENT__AGENT__WORKER_ID": "abc:0",
        "CLEARML_AGENT__SDK__FOO": "5",
        "CONVEYOR__SERVER__PORT": "9100",
        "CONVEYOR__SERVER__DB": "postgresql://db/conveyor",
    })
    cfg = load_config(environ=env)
    assert cfg.get("agent.package_manager.type") == "pip"
    assert cfg.get("agent.docker_force_pull") is True
    assert cfg.get("agent.extra_docker_arguments") == ["--ipc=host", "-e", "A=1"]
    assert cfg.get("agent.worker_id") == "abc:0"
    assert cfg.get("sdk.foo") == 5
    assert cfg.get("conveyor.server.port") == 9100
    assert cfg.get("conveyor.server.db") == "postgresql://db/conveyor"
    assert cfg.get("conveyor.server.host") == "127.0.0.1"  # siblings untouched


def test_override_values_are_converted_to_the_defaults_type(env):
    env["CLEARML_AGENT__AGENT__WORKER_NAME"] = "123"  # JSON 123, but the key is a string
    env["CLEARML_AGENT__AGENT__VENVS_CACHE__FREE_SPACE_THRESHOLD_GB"] = "5"
    cfg = load_config(environ=env)
    assert cfg.get("agent.worker_name") == "123"
    assert cfg.get("agent.venvs_cache.free_space_threshold_gb") == 5.0
    assert isinstance(cfg.get("agent.venvs_cache.free_space_threshold_gb"), float)


def test_a_section_override_then_its_keys(env):
    env["CLEARML_AGENT__AGENT__DEFAULT_DOCKER"] = '{"image": "python:3.12", "arguments": ["--ipc=host"]}'
    env["CLEARML_AGENT__AGENT__DEFAULT_DOCKER__IMAGE"] = "python:3.13"
    cfg = load_config(environ=env)
    assert cfg.get("agent.default_docker.image") == "python:3.13"
    assert cfg.get("agent.default_docker.arguments") == ["--ipc=host"]
    assert cfg.get("agent.default_docker.update_back_task") is True


def test_bad_override_names_the_variable(env):
    env["CONVEYOR__SERVER__PORT"] = "eighty"
    with pytest.raises(ConfigError) as err:
        load_config(environ=env)
    assert str(err.value) == ('Environment variable CONVEYOR__SERVER__PORT: conveyor.server.port must be a whole '
                              'number, not "eighty" — fix or unset CONVEYOR__SERVER__PORT')


def test_names_that_are_no_path_are_ignored(env):
    env["CLEARML_AGENT__"] = "x"
    env["CLEARML_AGENT___AGENT"] = "x"
    assert load_config(environ=env).api_host == "http://127.0.0.1:8008"


# -- errors ----------------------------------------------------------------------------------------------


def test_malformed_file_names_file_and_line(env, home):
    write(home / "clearml.conf", "api {\n  api_server: \"http://x\"\n  credentials {\n    access_key: \"a\"\n}\n")
    with pytest.raises(ConfigError) as err:
        load_config(environ=env)
    message = str(err.value)
    assert message.startswith("~/clearml.conf, line 6: expected '}'")
    assert message.endswith("— fix the file or point CLEARML_CONFIG_FILE elsewhere")
    assert err.value.line == 6
    assert err.value.source == "~/clearml.conf"


def test_unresolved_substitution_names_the_line(env, home):
    write(home / "clearml.conf", 'a: 1\nb: ${does_not_exist}\n')
    with pytest.raises(ConfigError, match=r"^~/clearml.conf, line 2: cannot resolve variable \$\{does_not_exist\}"):
        load_config(environ=env)


def test_wrong_type_names_file_key_and_line(env, home):
    write(home / "clearml.conf", 'agent {\n  worker_name: "w"\n  kill_grace_sec: "abc"\n}\n')
    with pytest.raises(ConfigError) as err:
        load_config(environ=env)
    assert str(err.value) == ('~/clearml.conf, line 3: agent.kill_grace_sec must be a whole number, not "abc" — '
                              'fix the file or point CLEARML_CONFIG_FILE elsewhere')
    assert err.value.key == "agent.kill_grace_sec"


@pytest.mark.parametrize("text, key, expected", [
    ('agent.package_manager: "pip"', "agent.package_manager", "a section"),
    ("agent.docker_force_pull: maybe", "agent.docker_force_pull", "true or false"),
    ("api.credentials.access_key: [1, 2]", "api.credentials.access_key", "a string"),
    ("agent.git_fetch_args: 5", "agent.git_fetch_args", "a list"),
    ("agent.venvs_cache.free_space_threshold_gb: lots", "agent.venvs_cache.free_space_threshold_gb", "a number"),
])
def test_wrong_types(env, home, text, key, expected):
    write(home / "clearml.conf", text)
    with pytest.raises(ConfigError, match=rf"^~/clearml.conf, line 1: {re.escape(key)} must be {expected}"):
        load_config(environ=env)


def test_loose_spellings_are_converted(env, home):
    write(home / "clearml.conf", 'agent { kill_grace_sec: "15", docker_force_pull: yes, worker_name: 7 }\n'
                                 "api.verify_certificate: off\nagent.package_manager.pip_version: \"\"")
    cfg = load_config(environ=env)
    assert cfg.get("agent.kill_grace_sec") == 15
    assert cfg.get("agent.docker_force_pull") is True
    assert cfg.get("agent.worker_name") == "7"
    assert cfg.get("api.verify_certificate") is False
    assert cfg.get("agent.package_manager.pip_version") == ""


def test_file_outside_home_is_shown_in_full(env, tmp_path):
    bad = write(tmp_path / "bad.conf", "a {")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}, line 1:"):
        load_config(bad, environ=env)


# -- reading ---------------------------------------------------------------------------------------------


def test_get(env):
    cfg = load_config(environ=env)
    with pytest.raises(ConfigKeyError) as err:
        cfg.get("agent.no_such_key")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ConfigError)
    assert str(err.value) == "No setting 'agent.no_such_key' in the configuration"
    assert cfg.get("agent.no_such_key", 3) == 3
    assert cfg.get("agent.kill_grace_sec.deeper", None) is None
    section = cfg.get("agent.package_manager")
    section["type"] = "changed"
    cfg.get("agent.git_fetch_args").append("--changed")
    assert cfg.get("agent.package_manager.type") == "uv"
    assert "--changed" not in cfg.get("agent.git_fetch_args")


def test_get_path_expands_home(env, monkeypatch):
    monkeypatch.setenv("HOME", env["HOME"])
    cfg = load_config(environ=env)
    assert cfg.get_path("conveyor.server.data_dir") == Path(env["HOME"]) / ".conveyor"
    assert cfg.get_path("conveyor.server.db") is None


# -- masking ---------------------------------------------------------------------------------------------


def test_masking(env, home):
    write(home / "clearml.conf", """
        api.credentials { access_key: "AKEY", secret_key: "SKEY" }
        agent {
          git_user: "me"
          git_pass: "GITPASS"
          git.extra_credentials: [{user: "u2", pass: "P2", host: "h"}]
          package_manager.extra_index_url: ["https://user:IDXPASS@pypi.example.com/simple"]
          extra_docker_arguments: ["--ipc=host", "-e", "HF_TOKEN=HFSECRET", "--env=X=XSECRET"]
        }
        environment { AWS_KEY: "ENVVALUE" }
        files { f { path: "/x", contents: "FILEBODY" } }
    """)
    cfg = load_config(environ=env)
    shown = cfg.as_dict()
    assert shown["api"]["credentials"] == {"access_key": "****", "secret_key": "****"}
    assert shown["agent"]["git_user"] == "me"
    assert shown["agent"]["git_pass"] == "****"
    assert shown["agent"]["git"]["extra_credentials"] == [{"user": "u2", "pass": "****", "host": "h"}]
    assert shown["agent"]["package_manager"]["extra_index_url"] == ["https://user:****@pypi.example.com/simple"]
    assert shown["agent"]["extra_docker_arguments"] == ["--ipc=host", "-e", "HF_TOKEN=****", "--env=X=****"]
    assert shown["environment"] == {"AWS_KEY": "****"}
    assert shown["files"]["f"] == {"path": "/x", "contents": "****"}
    # numbers and flags under secret-sounding keys stay readable; so do the masking rules themselves
    assert shown["api"]["auth"]["token_expiration_threshold_sec"] == 43200
    assert shown["agent"]["enable_git_ask_pass"] is True
    assert shown["agent"]["sanitize_config_printout"]["hide_secrets"][0] == "secret"

    text = cfg.to_hocon()
    for secret in ("AKEY", "SKEY", "GITPASS", "P2", "IDXPASS", "HFSECRET", "XSECRET", "ENVVALUE", "FILEBODY"):
        assert secret not in text
        assert secret in cfg.to_hocon(masked=False)
    assert cfg.as_dict(masked=False)["api"]["credentials"]["secret_key"] == "SKEY"


def test_empty_secret_shows_as_empty(env):
    assert load_config(environ=env).as_dict()["api"]["credentials"]["secret_key"] == ""


def test_to_hocon_reads_back(env):
    env["CLEARML_AGENT__ODD__KEYS"] = '{"a.b": 1, "with space": [true, null, "x\\"y", "\u00e9t\u00e9"]}'
    cfg = load_config(environ=env)
    back = ConfigFactory.parse_string(cfg.to_hocon(masked=False)).as_plain_ordered_dict()
    assert json.loads(json.dumps(back)) == cfg.as_dict(masked=False)


# -- the parse cache -------------------------------------------------------------------------------------


def test_parsed_file_is_cached_by_content(env, home, tmp_path):
    conf = write(home / "clearml.conf", 'agent.worker_name: "one"')
    assert load_config(environ=env).get("agent.worker_name") == "one"
    cached = list((tmp_path / "cache" / "conveyor" / "config").glob("file-*.json"))
    assert len(cached) == 1
    # a cache entry is used only for the exact text it came from
    entry = json.loads(cached[0].read_text())
    entry["data"]["agent"]["worker_name"] = "from-cache"
    cached[0].write_text(json.dumps(entry))
    assert load_config(environ=env).get("agent.worker_name") == "from-cache"
    conf.write_text('agent.worker_name: "two"')
    assert load_config(environ=env).get("agent.worker_name") == "two"


@pytest.mark.parametrize(("text", "shown"), [
    ("agent.worker_name: ${WORKER_FROM_ENV}", "{}"),
    # the line "#" belongs to the triple-quoted string: what follows it is a substitution all the same
    ('agent.worker_name: """x\n#""" ${WORKER_FROM_ENV}', "x\n#{}"),
])
def test_files_with_substitutions_are_not_cached(env, home, tmp_path, monkeypatch, text, shown):
    write(home / "clearml.conf", text)
    monkeypatch.setenv("WORKER_FROM_ENV", "first")
    assert load_config(environ=env).get("agent.worker_name") == shown.format("first")
    monkeypatch.setenv("WORKER_FROM_ENV", "second")
    assert load_config(environ=env).get("agent.worker_name") == shown.format("second")
    assert not list((tmp_path / "cache").rglob("file-*.json"))


def test_substitutions_in_comments_do_not_stop_the_cache(env, home, tmp_path):
    # defaults.conf's comments name ${CLEARML_PRE_SETUP}: every process would parse it with pyhocon (~0.5 s)
    write(home / "clearml.conf", '# from ${NOWHERE}, to include nothing\n  // ${NOR_HERE}\nagent.worker_name: "w"')
    assert load_config(environ=env).get("agent.worker_name") == "w"
    assert list((tmp_path / "cache" / "conveyor" / "config").glob("file-*.json"))
    text = DEFAULTS_FILE.read_text()
    hocon.parse(text, source="defaults.conf", hint="", cache_slot="defaults", environ=env)
    assert (tmp_path / "cache" / "conveyor" / "config" / "defaults.json").is_file()


def test_a_parse_that_found_no_settings_in_settings_is_not_kept(env, home, tmp_path, monkeypatch):
    """Two threads parsing at once once got an empty tree from pyhocon, which the cache then served for good: every
    later client found no credentials. Parses now take turns, and an empty result for a file with settings is never
    cached."""
    from pyhocon import ConfigFactory, ConfigTree

    write(home / "clearml.conf", 'agent.worker_name: "w"')
    real = ConfigFactory.parse_string
    monkeypatch.setattr(ConfigFactory, "parse_string", lambda *a, **k: ConfigTree())
    assert load_config(environ=env).get("agent.worker_name") != "w"  # the bad parse, as a race made it
    monkeypatch.setattr(ConfigFactory, "parse_string", real)
    assert load_config(environ=env).get("agent.worker_name") == "w"


def test_unwritable_cache_is_not_an_error(env, home, tmp_path):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    write(home / "clearml.conf", 'agent.worker_name: "w"')
    assert load_config(environ=env).get("agent.worker_name") == "w"


def test_hocon_dump_quotes_what_needs_it():
    assert hocon.dump({"a": {"b.c": "x", "d": {}}, "e f": [1, None]}) == (
        'a {\n  "b.c": "x"\n  d {}\n}\n"e f": [1, null]')


# -- writing ---------------------------------------------------------------------------------------------


def test_write_api_section(env, home):
    target = home / "sub" / "clearml.conf"
    assert write_api_section(target, "http://h:8008/", "http://h:8080", "http://h:8081", "KEY", 'SE"CRET') is True
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    cfg = load_config(target, environ=env)
    assert (cfg.api_host, cfg.web_host, cfg.files_host) == ("http://h:8008", "http://h:8080", "http://h:8081")
    assert (cfg.access_key, cfg.secret_key) == ("KEY", 'SE"CRET')
    assert cfg.get("agent.package_manager.type") == "uv"

    before = target.read_text()
    assert write_api_section(target, "http://other", "http://other", "http://other", "K2", "S2") is False
    assert target.read_text() == before


def test_write_api_section_reports_unwritable_places(tmp_path):
    blocker = write(tmp_path / "blocker", "")
    with pytest.raises(ConfigError, match="Cannot create .*blocker/clearml.conf"):
        write_api_section(blocker / "clearml.conf", "http://h", "http://h", "http://h", "K", "S")


def test_config_repr_has_no_secret(env):
    env["CLEARML_API_SECRET_KEY"] = "TOPSECRET"
    cfg = load_config(environ=env)
    assert "TOPSECRET" not in repr(cfg)
    assert isinstance(cfg, Config)
