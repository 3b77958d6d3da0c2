"""`conveyor build`: the flags of `clearml-agent build` (clearml-agent.md §10); the work is in agent/build.py."""

from __future__ import annotations

import argparse
import sys

from conveyor.cli.agent import _container_args


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="build a task's environment into a folder, or into a container image",
                       description="Build a task's environment (code, venv) ahead of time. Without --docker, into "
                       "the folder --target; with --docker, into the image --target. Nothing runs and the task's "
                       "status does not change. An image made with --entry-point runs on its own: `docker run "
                       "--network host -e CLEARML_API_HOST=... -e CLEARML_API_ACCESS_KEY=... "
                       "-e CLEARML_API_SECRET_KEY=... IMAGE` (credentials are never baked into the image).")
    b.add_argument("--id", required=True, help="the task id")
    b.add_argument("--target", help="the folder (default: <agent.venvs_dir>/build-<id>), or with --docker the "
                   "image name (default: task_id_<id>)")
    _container_args(b)  # --docker [IMAGE [ENGINE ARGS...]], --podman [...], as daemon and execute read them
    b.add_argument("--force-docker", action="store_true",
                   help="use the --docker image (or the default) even when the task names one")
    b.add_argument("--python-version", help="the Python version for the venv (default: the task's)")
    b.add_argument("--entry-point", choices=["reuse_task", "clone_task"],
                   help="with --docker: the image runs the task (reuse_task) or a clone of it at each start "
                   "(clone_task); without: an image with the environment only")
    b.add_argument("--install-globally", action="store_true",
                   help="install the requirements into the interpreter itself instead of a venv (for images)")
    b.add_argument("--git-user", help="git user for cloning over https (agent.git_user)")
    b.add_argument("--git-pass", help="git password or token (agent.git_pass); prefer the config file")
    b.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"])
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from conveyor.agent import build
    from conveyor.cli.agent import _setup_logging
    from conveyor.cli.common import config_of
    from conveyor.client import ApiClient

    _setup_logging(args.log_level)
    cfg = config_of(args)
    client = ApiClient.from_config(cfg)
    opts = build.BuildOptions(task_id=args.id, target=args.target, docker=args.docker, podman=args.podman is True,
                              force_docker=args.force_docker, python_version=args.python_version,
                              entry_point=args.entry_point, install_globally=args.install_globally,
                              git_user=args.git_user, git_pass=args.git_pass)
    if args.docker is None:
        if args.entry_point:
            print("conveyor: --entry-point makes an image: add --docker", file=sys.stderr)
            return 2
        built = build.build_folder(client, cfg, opts, log=print)
        print(build.summary(built), flush=True)
        return 0
    from conveyor.agent import image_build

    image, engine = image_build.build_image(client, cfg, opts, log=print)
    print(image_build.image_summary(image, opts, engine), flush=True)
    return 0
