"""`conveyor k8s`: the Kubernetes glue, with the flags of the reference's k8s glue and the docs' per-queue config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conveyor.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("k8s", help="run queued tasks as Kubernetes Jobs, one pod template per queue (the k8s glue)")
    p.add_argument("--queue", nargs="+", default=[], metavar="QUEUE",
                   help="queue names or ids, in priority order (default: the queues of --config)")
    p.add_argument("--template-yaml", type=Path, metavar="FILE",
                   help="the base pod template: a Pod, a Job or a pod spec (agent.k8s.template_yaml)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="per-queue templateOverrides and queueSettings.maxPods, the docs' agentk8sglue shape "
                        "(agent.k8s.config_yaml)")
    p.add_argument("--namespace", help="where the Jobs go (agent.k8s.namespace)")
    p.add_argument("--max-pods", type=int, metavar="N",
                   help="at most N Jobs not ended at once; beyond it the glue stops pulling (agent.k8s.max_pods)")
    p.add_argument("--conveyor-image", metavar="IMAGE",
                   help="the image that brings Conveyor into the pods (agent.k8s.conveyor_image; default: one built "
                        "here from this Conveyor with the local Docker)")
    p.add_argument("--build-image", metavar="TAG", nargs="?", const="",
                   help="build the Conveyor image for the pods (push it where the cluster pulls from), print its "
                        "tag and exit")
    p.add_argument("--copy-bundle", metavar="DIR", type=Path,
                   help="copy the Conveyor bundle this runs from into DIR and exit (an init container's work, in "
                        "Conveyor's image)")
    p.add_argument("--order-fairness", action="store_true", help="round-robin between the queues instead of priority")
    p.add_argument("--create-queue", action="store_true", help="create queues that do not exist")
    p.add_argument("--polling-interval", type=float, help="seconds between polls when the server has no long-poll")
    p.add_argument("--status", action="store_true", help="list the glue's Jobs and their tasks, and exit")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"])
    p.set_defaults(func=run_glue)


def _path(flag: Path | None, configured: object) -> Path | None:
    if flag is not None:
        return flag
    return Path(str(configured)).expanduser() if configured else None


def run_glue(args: argparse.Namespace) -> int:
    from conveyor.cli.agent import _setup_logging
    from conveyor.cli.common import config_of

    if args.copy_bundle is not None:
        return copy_bundle(args.copy_bundle)
    _setup_logging(args.log_level)
    cfg = config_of(args)
    if args.build_image is not None:
        return build_image(cfg, args.build_image)
    from conveyor.agent import control
    from conveyor.agent.daemon import DaemonOptions
    from conveyor.agent.k8s_glue import K8sGlue
    from conveyor.agent.session import agent_client
    from conveyor.runtimes import k8s_templates

    glue = k8s_templates.load(_path(args.template_yaml, cfg.get("agent.k8s.template_yaml")),
                              _path(args.config, cfg.get("agent.k8s.config_yaml")))
    namespace = args.namespace or str(glue.settings.get("namespace") or cfg.get("agent.k8s.namespace"))
    if args.status:
        return print_status(cfg, namespace)
    queues = list(args.queue) or glue.queues
    if not queues:
        raise UserError("No queue to serve", hint="Pass --queue NAME [NAME ...], or name queues in --config")
    max_pods = args.max_pods if args.max_pods is not None else int(glue.settings.get("maxPods")
                                                                    or cfg.get("agent.k8s.max_pods"))
    if max_pods < 0:
        raise UserError(f"--max-pods {max_pods}: give 0 (no limit) or more")
    opts = DaemonOptions(queues=queues, order_fairness=args.order_fairness, create_queue=args.create_queue,
                         polling_interval=args.polling_interval, cpu_only=True, launched_by="k8s",
                         argv=control.mask_argv(["conveyor", *sys.argv[1:]]))
    return K8sGlue(agent_client(cfg), cfg, opts, glue=glue, namespace=namespace, max_pods=max_pods,
                   conveyor_image=args.conveyor_image or str(cfg.get("agent.k8s.conveyor_image") or "")).run()


def copy_bundle(target: Path) -> int:
    import shutil

    from conveyor.runtimes.bundle import current

    bundle = current()
    if bundle is None:
        raise UserError("--copy-bundle: this Conveyor does not run from a bundle",
                        hint="Run it in Conveyor's image (`conveyor k8s --build-image`)")
    shutil.copytree(bundle.host_dir, target, symlinks=True, dirs_exist_ok=True)
    return 0


def build_image(cfg: object, tag: str) -> int:
    from conveyor.config import Config
    from conveyor.runtimes.bundle import BundleError, prepare
    from conveyor.runtimes.k8s import build_conveyor_image

    assert isinstance(cfg, Config)
    root = Path(str(cfg.get("agent.docker_conveyor_env_dir") or "~/.clearml/conveyor-bundles")).expanduser()
    try:
        bundle = prepare(root, log=lambda line: print(line, file=sys.stderr))
    except (BundleError, OSError) as exc:
        raise UserError(f"Could not make Conveyor's bundle: {exc}") from None
    print(build_conveyor_image(bundle, tag or None))
    return 0


def print_status(cfg: object, namespace: str) -> int:
    """The Jobs of this machine's glues (by the worker id, and their records), with their tasks and pods' state."""
    import socket

    from conveyor.cli._output import print_table
    from conveyor.config import Config
    from conveyor.runtimes.cluster import ClusterError, JobRecord
    from conveyor.runtimes.k8s import LABEL_GLUE, LABEL_TASK, KubeApi, glue_label

    assert isinstance(cfg, Config)
    # this machine's glue (its worker id, as `conveyor k8s` makes it) and any other whose records are here
    this = str(cfg.get("agent.worker_id") or f"{cfg.get('agent.worker_name') or socket.gethostname()}:k8s")
    workers = sorted({this} | {r.worker for r in JobRecord.of("k8s", None)})
    rows = []
    if workers:
        api = KubeApi(str(cfg.get("agent.k8s.kubeconfig") or ""), namespace, 0)
        for worker in workers:
            try:
                jobs, pods = api.look(f"{LABEL_GLUE}={glue_label(worker)}")
            except ClusterError as exc:
                print(f"({worker}: {exc})")
                continue
            for name, job in sorted(jobs.items()):
                pod = pods.get(name)
                phase = pod.status.phase if pod is not None else "no pod"
                rows.append((worker, (job.metadata.labels or {}).get(LABEL_TASK, ""), name, phase))
    print_table(("GLUE", "TASK", "JOB", "POD"), rows,
                empty=f"No Jobs of a glue of this machine in namespace {namespace} — start one with "
                      "`conveyor k8s --queue NAME`")
    return 0
