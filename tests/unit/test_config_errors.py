"""Settings that cannot be used: what the user reads, and where the error sits in the tree (conveyor.errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

from conveyor.config import ConfigError, ConfigKeyError, defaults, load_config
from conveyor.config.schema import normalize
from conveyor.errors import ConveyorError, UserError


def env_of(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), **variables}


def test_a_bad_named_variable_says_which_variable_and_what_it_must_be(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ=env_of(tmp_path, CLEARML_API_HOST_VERIFY_CERT="perhaps"))
    assert str(err.value) == ('Environment variable CLEARML_API_HOST_VERIFY_CERT: api.verify_certificate must be '
                              'true or false, not "perhaps" — fix or unset CLEARML_API_HOST_VERIFY_CERT')
    assert (err.value.source, err.value.key, err.value.line) == ("CLEARML_API_HOST_VERIFY_CERT",
                                                                   "api.verify_certificate", None)
    assert isinstance(err.value, UserError) and err.value.hint is None  # the message already says what to do


def test_a_file_layer_beats_the_defaults_and_a_variable_beats_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text('api { api_server: "http://from-file:8008", http { max_req_size: "2048" } }\n')
    from_file = load_config(environ=env_of(tmp_path))
    assert from_file.api_host == "http://from-file:8008"
    assert from_file.get("api.http.max_req_size") == 2048  # "2048" in the file, a number as the default is
    from_env = load_config(environ=env_of(tmp_path, CLEARML_API_HOST="http://from-env:8008"))
    assert from_env.api_host == "http://from-env:8008"
    assert from_env.path == conf


def test_a_missing_key_is_a_config_key_error_that_reads_like_a_sentence() -> None:
    with pytest.raises(KeyError) as err:
        defaults().get("agent.no_such_setting")
    assert isinstance(err.value, ConfigKeyError) and isinstance(err.value, ConveyorError)
    assert str(err.value) == "No setting 'agent.no_such_setting' in the configuration"
    assert defaults().get("agent.no_such_setting", 7) == 7


class Refused(Exception):
    pass


def refuse(key: str, value: Any, expected: str) -> NoReturn:
    raise Refused(f"{key} must be {expected}, not {value!r}")


@pytest.mark.parametrize(("value", "default", "expected"), [
    ("yes", False, True), ("OFF", True, False), (1, False, True),
    ("12", 0, 12), (3.0, 0, 3), ("0.5", 1.0, 0.5), (7, 1.0, 7.0),
    (True, "", "true"), (8, "", "8"), ("", [], ""), (["a"], [], ["a"]),
])
def test_loose_spellings_become_the_defaults_type(value: Any, default: Any, expected: Any) -> None:
    out = normalize({"k": value}, {"k": default}, refuse)
    assert out == {"k": expected} and type(out["k"]) is type(expected)


@pytest.mark.parametrize(("value", "default", "message"), [
    ("maybe", False, "s.k must be true or false, not 'maybe'"),
    (2.5, 0, "s.k must be a whole number, not 2.5"),
    ("ten", 1.0, "s.k must be a number, not 'ten'"),
    ({"a": 1}, "", "s.k must be a string, not {'a': 1}"),
    (5, [], "s.k must be a list [ ... ], not 5"),
])
def test_values_of_another_kind_are_refused_with_their_full_key(value: Any, default: Any, message: str) -> None:
    with pytest.raises(Refused) as err:
        normalize({"s": {"k": value}}, {"s": {"k": default}}, refuse)
    assert str(err.value) == message


def test_null_keeps_the_default_and_unknown_keys_pass_through() -> None:
    assert normalize({"k": None, "new": {"x": 1}}, {"k": 5}, refuse) == {"new": {"x": 1}}
    with pytest.raises(Refused, match="^s must be a section"):
        normalize({"s": 3}, {"s": {"k": 1}}, refuse)
