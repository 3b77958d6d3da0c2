"""Where a step's progress lines go: the task's log when an agent runs the step, the terminal for `conveyor build`.

Steps (checkout, environment build, container start) take a `Log` rather than printing, so that one piece of code
serves the daemon, the executor and the commands alike."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]
