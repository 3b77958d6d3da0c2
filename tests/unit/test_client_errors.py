"""The error tree as callers catch it, and `map_exceptions`, the one way errors from below become ours."""

from __future__ import annotations

import httpx
import pytest

from conveyor.client import ApiClient
from conveyor.client.errors import ApiCallError, AuthError, ClientError, ServerUnreachable
from conveyor.client.task_builder import SpecError
from conveyor.config import ConfigError
from conveyor.env.git_cmd import GitFailed, GitNotFound
from conveyor.env.managers.base import EnvBuildError
from conveyor.env.notebook import NotebookError
from conveyor.env.repo_state import RepoError
from conveyor.env.vcs import VcsError
from conveyor.errors import ConveyorError, InternalError, TaskFailure, UserError, map_exceptions
from conveyor.protocol.errors import ApiError


@pytest.mark.parametrize(("error", "parent"), [
    (ApiCallError, ClientError), (AuthError, ApiCallError), (ServerUnreachable, ClientError),
    (ClientError, ConveyorError), (ApiError, ConveyorError),
    (ConfigError, UserError), (SpecError, UserError), (GitNotFound, UserError),
    (VcsError, TaskFailure), (RepoError, TaskFailure), (EnvBuildError, TaskFailure), (NotebookError, TaskFailure),
    (GitFailed, TaskFailure), (UserError, ConveyorError), (TaskFailure, ConveyorError),
    (InternalError, ConveyorError),
])
def test_every_error_has_its_place_in_the_tree(error: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(error, parent)


def test_a_user_error_shows_its_hint_once() -> None:
    assert str(UserError("git is missing", hint="install git")) == "git is missing. install git"
    assert str(UserError("git is missing — install git", hint="install git")) == "git is missing — install git"
    assert str(GitNotFound()) == "git is not installed (or not on PATH) on this machine. install git " \
                                 "(e.g. `apt-get install git`)"


def test_map_exceptions_translates_the_first_match_and_keeps_the_original() -> None:
    mapping = {KeyError: UserError, LookupError: lambda exc: InternalError(f"lookup: {exc}")}
    with pytest.raises(UserError) as err, map_exceptions(mapping):
        raise KeyError("k")
    assert isinstance(err.value.__cause__, KeyError)
    with pytest.raises(InternalError, match="^lookup: list index out of range$"), map_exceptions(mapping):
        [][1]  # noqa: B018 - an IndexError, a LookupError but no KeyError
    with pytest.raises(ValueError), map_exceptions(mapping):  # not in the mapping: passes through as it is
        raise ValueError("v")


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def looping(request: httpx.Request) -> httpx.Response:
    raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=request)


def test_no_answer_becomes_server_unreachable_with_a_reason_and_what_to_do() -> None:
    client = ApiClient("http://127.0.0.1:1", "key", "secret", max_retries=0, transport=httpx.MockTransport(unreachable))
    with pytest.raises(ServerUnreachable) as err:
        client.call("tasks.get_all")
    assert str(err.value) == ("Cannot reach the Conveyor server at http://127.0.0.1:1 (connection refused) — is "
                              "`conveyor server` running? Set api.api_server or CLEARML_API_HOST")
    assert isinstance(err.value.__cause__, httpx.ConnectError)


def test_a_request_httpx_cannot_finish_is_an_api_call_error() -> None:
    client = ApiClient("http://127.0.0.1:1", "key", "secret", max_retries=0, transport=httpx.MockTransport(looping))
    with pytest.raises(ApiCallError) as err:
        client.login()
    assert str(err.value) == "auth.login failed (0/0): TooManyRedirects: Exceeded maximum allowed redirects."
