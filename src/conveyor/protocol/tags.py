"""System tags with a meaning to Conveyor. They travel with the task (clones copy system tags) and are invisible to
the clearml SDK and the reference agent."""

from __future__ import annotations

# The task's `Args` hyper-parameters go on the entry point's command line as `--name value`. Set by
# `conveyor task create --args`: such a script does not bind argparse through the clearml SDK. Without it the
# agent leaves argv alone, as the reference does, and the SDK inside the task applies `Args` to argparse.
ARGS_ON_COMMAND_LINE = "conveyor:args-on-command-line"

# A queue tag: daemons serving this queue pull nothing from it until the tag is removed (ClearML's "pause").
QUEUE_PAUSED = "force_workers:off"

# A queue tag: daemons serving this queue pull from it whatever their schedule or runtime property `force` says.
QUEUE_FORCED_ON = "force_workers:on"

# A queue's metadata key (not a tag): why a glue (Slurm, Kubernetes) does not pull the queue now, its job limit
# reached; `queue list` shows it.
QUEUE_LIMIT_NOTE = "conveyor_glue_limit"
