"""The root of every exception Conveyor raises on purpose, and the one helper that translates errors at a boundary.

    ConveyorError                    catch this for "anything Conveyor refused or could not do"
    ├── UserError                    the user can fix it; `str()` says what was wrong, `hint` what to do
    │   ├── ConfigError              config/errors.py (ConfigKeyError)
    │   ├── SpecError, InitError,    a task spec, `conveyor init`, `conveyor build`, a daemon's options…
    │   │   BuildError, DaemonError
    │   └── GitNotFound              env/git_cmd.py: this machine has no git (the hint says how to install it)
    ├── ApiError                     protocol/errors.py: an error the server answers with (code/subcode)
    ├── ClientError                  client/errors.py: a call failed as seen from the client
    │   ├── ApiCallError ── AuthError
    │   └── ServerUnreachable
    ├── TaskFailure                  a task's run failed; `str()` becomes the task's status reason
    │   ├── VcsError, RepoError      the task's repository could not be checked out or its diff applied
    │   ├── GitFailed                env/git_cmd.py: one git command failed (vcs.py words it as a VcsError)
    │   ├── EnvBuildError            its Python environment could not be built
    │   ├── LaunchError, BundleError its container could not be started
    │   └── ImageEnvError, NotebookError
    └── InternalError                a fault of Conveyor or its machine, not of the user's input
        ├── StoreError               the database failed
        └── CacheUnavailable         env/cache.py: the venv cache cannot take a build (the build goes around it)

Errors from below (httpx, sqlite, OSError…) are translated once per boundary with `map_exceptions`, never
re-wrapped at every level: client/api.py `_request_once` is where httpx's errors become ServerUnreachable and
ApiCallError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose. Messages are meant for people and never hold a secret."""


class UserError(ConveyorError):
    """Input the user can fix: `str()` says what was wrong, `hint` (when known) what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message}. {self.hint}" if self.hint and self.hint not in message else message


class InternalError(ConveyorError):
    """A fault of Conveyor or its machine (database, disk, a bug) rather than of what the user asked."""


class TaskFailure(ConveyorError):
    """A task's run cannot go on; the message becomes the task's status reason, as shown to its user.
    `failure_class` (protocol/failure.py) says whether another try may succeed: "task" unless whoever raises it
    knows that the machine, the network or the cluster is at fault ("infrastructure")."""

    failure_class = "task"

    def __init__(self, *args: object, failure_class: str | None = None):
        super().__init__(*args)
        if failure_class:
            self.failure_class = failure_class


ErrorFactory = Callable[[BaseException], BaseException]


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[BaseException] | ErrorFactory]) -> Iterator[None]:
    """Translate lower-layer errors into ours at a boundary (the first matching class wins, subclasses included).

    A value may be an exception class, called with the original's message, or a factory given the original.
    The original stays attached as `__cause__`."""
    try:
        yield
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                if isinstance(target, type):
                    raise target(str(exc)) from exc
                raise target(exc) from exc
        raise
