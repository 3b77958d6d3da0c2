#!/usr/bin/env bash
# A real single-node Kubernetes 1.20.2 (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet on
# dockerd through the kubelet's dockershim), as reference/runtimes.md §5 describes it. No systemd on these machines:
# the daemons are started by hand with pid files.
#
#   .ci/k8s.sh up             install what is missing, start what is stopped, wait for the node and the default
#                             service account; where everything runs already, it only checks it
#   .ci/k8s.sh down           stop the daemons, remove the pods' containers and the kubelet's mounts (§5.7)
#   .ci/k8s.sh status         exit 0 when every daemon runs (by its pid file)
#   .ci/k8s.sh runc-wrapper   write the runc wrapper that clamps a negative oomScoreAdj (§5.4) and print its path,
#                             for `dockerd --add-runtime oomclamp=PATH --default-runtime=oomclamp`
#   .ci/k8s.sh kubeconfig     print the kubeconfig's path
#
# Pods must use local images (imagePullPolicy: Never, or a non-latest tag) and `hostNetwork: true` to reach a server
# on 127.0.0.1: there is no kube-proxy and no CNI (§5.6).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CONVEYOR_K8S_CACHE:-/var/cache/conveyor-k8s}   # the binaries, kept between runs
STATE=${CONVEYOR_K8S_STATE:-/var/lib/conveyor-k8s}     # keys, tokens, the runc wrapper, the kubeconfig
RUN=$STATE/run                                          # etcd data, certificates, logs, pid files
KUBECONFIG_PATH=$STATE/kubeconfig                       # the well-known kubeconfig (tests: tests/k8skit.py)
RUNC_WRAP=$STATE/runc-wrap
BIN=$CACHE/bin
PAUSE_IMAGE=local/pause:3.2
NODE=$(hostname -s | tr '[:upper:]' '[:lower:]')
API=https://127.0.0.1:6443
DAEMONS="etcd apiserver kcm sched kubelet"              # start order; stopped in reverse
# the prebuilt binaries (../shared/k8s/README.md); without them, a build from Debian's source (§5.2, ~6 min)
# Known bad: this tarball's binaries carry Kubernetes 1.20's vendored reflect2 v1.0.1 built with Go 1.19; reflect2
# < 1.0.2 breaks on Go >= 1.18 (modern-go/reflect2#23), and the API server dies with "fatal error: fault" (SIGSEGV in
# runtime.mapiterinit under json-iterator's sortKeysMapEncoder) within a minute, as soon as a JSON client (curl, the
# Python client, kubectl) reads an object with a map. Such a tarball is not used: the binaries are built from source.
BAD_TARBALLS="bb4b0b297d431dd7d1eedd6dbbd77e2f9d886ccf380815d4c599d1138859b788"
SOURCE_BUILD=built-from-debian-source-with-reflect2-1.0.2
TARBALL=${CONVEYOR_K8S_TARBALL:-}
if [ -z "$TARBALL" ]; then
  for d in "$REPO/shared/k8s" "$REPO/../shared/k8s"; do
    [ -f "$d/k8s-1.20.2-bin.tar.xz" ] && { TARBALL=$(cd "$d" && pwd)/k8s-1.20.2-bin.tar.xz; break; }
  done
fi

# apt_install: apt-get update at most once, and only when something is missing
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# a daemon runs when its pid file names a live process
running() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# stop the daemon of a pid file (if it runs) and wait up to 10 s for it to go
stop_daemon() {
  local pid
  if running "$1"; then
    pid=$(cat "$RUN/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    echo "stopped $1 ($pid)"
  fi
  rm -f "$RUN/$1.pid"
}

# fail with the tail of the logs that tell why
die() {
  local msg=$1 f
  shift
  echo "k8s.sh: $msg" >&2
  for f in "$@"; do
    [ -s "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 25 "$f" >&2; }
  done
  exit 1
}

# start a daemon in its own session (it outlives the caller), its output in $RUN/NAME.log, its pid in $RUN/NAME.pid
start_daemon() {
  local name=$1
  shift
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $RUN/$name.log)"
}

# wait up to $1 seconds for the command after it to succeed
wait_for() {
  local secs=$1
  shift
  for _ in $(seq $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  "$@" >/dev/null 2>&1
}

token() { cut -d, -f1 "$RUN/tokens.csv"; }
# GET a path of the API server as the admin user (stdout: the body)
api_get() { curl -sfk --max-time 5 -H "Authorization: Bearer $(token)" "$API$1"; }
api_ready() { [ "$(curl -sk --max-time 5 -H "Authorization: Bearer $(token)" "$API/readyz")" = ok ]; }
node_ready() {
  [ "$(api_get "/api/v1/nodes/$NODE" | jq -r '.status.conditions[]? | select(.type == "Ready") | .status')" = True ]
}
default_sa() { api_get /api/v1/namespaces/default/serviceaccounts/default; }

# --- the runc wrapper (§5.4): the kubelet asks for oom_score_adj -998/-997, which runc cannot set without
# CAP_SYS_RESOURCE ("can't get final child's PID from pipe: EOF", §2.5); clamp it to 0 in the OCI bundle -----------
write_runc_wrapper() {
  local runc new
  runc=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH command -v runc || echo /usr/sbin/runc)
  mkdir -p "$STATE"
  new=$(
    cat <<EOF
#!/bin/bash
# written by .ci/k8s.sh: clamp a negative process.oomScoreAdj to 0 in the OCI bundle, then run the real runc
b=""; prev=""
for a in "\$@"; do
  if [ "\$prev" = "--bundle" ] || [ "\$prev" = "-b" ]; then b="\$a"; fi
  case "\$a" in --bundle=*) b="\${a#--bundle=}";; esac
  prev="\$a"
done
if [ -n "\$b" ] && [ -f "\$b/config.json" ] && [ -x /usr/bin/jq ]; then
  /usr/bin/jq -c 'if (.process.oomScoreAdj // 0) < 0 then .process.oomScoreAdj = 0 else . end' "\$b/config.json" \\
    > "\$b/config.json.tmp" && mv "\$b/config.json.tmp" "\$b/config.json"
fi
exec $runc "\$@"
EOF
  )
  if [ ! -f "$RUNC_WRAP" ] || [ "$(cat "$RUNC_WRAP")" != "$new" ]; then
    printf '%s\n' "$new" >"$RUNC_WRAP.tmp"
    chmod 755 "$RUNC_WRAP.tmp"
    mv "$RUNC_WRAP.tmp" "$RUNC_WRAP"
  fi
}

# --- dockerd with the wrapper as its default runtime ----------------------------------------------------------
ensure_dockerd() {
  local pid args=() a skip=0
  if docker info >/dev/null 2>&1; then
    if [ "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" = oomclamp ]; then
      echo "dockerd runs with the runc wrapper as its default runtime"
      return 0
    fi
    # started without it (not by .ci/run, which starts it with the wrapper): restart it with the same arguments
    # plus the wrapper; images and volumes stay in its data root
    pid=$(cat /var/run/docker.pid 2>/dev/null || pgrep -xo dockerd || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || die "docker answers but no dockerd process was found to restart"
    while IFS= read -r -d '' a; do
      if [ "$skip" = 1 ]; then skip=0; continue; fi
      case $a in
        --add-runtime | --default-runtime) skip=1 ;;  # ours replace them
        --add-runtime=* | --default-runtime=*) ;;
        *) args+=("$a") ;;
      esac
    done <"/proc/$pid/cmdline"
    [ ${#args[@]} -gt 0 ] || args=(dockerd)
    echo "dockerd ($pid) runs without the runc wrapper: restarting it with it (${args[*]})"
    kill "$pid"
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && die "dockerd ($pid) did not stop within 20 s"
  else
    apt_install docker.io
    args=(dockerd)
  fi
  mkdir -p "$RUN"
  # left running at the end, like a dockerd that ran before (its pid in $RUN/dockerd.pid for reference only)
  setsid "${args[@]}" --add-runtime "oomclamp=$RUNC_WRAP" --default-runtime=oomclamp \
    >"$RUN/dockerd.log" 2>&1 </dev/null &
  echo $! >"$RUN/dockerd.pid"
  echo "started dockerd (pid $!, log $RUN/dockerd.log)"
  wait_for 30 docker info || die "dockerd did not come up in 30 s" "$RUN/dockerd.log"
  [ "$(docker info --format '{{.DefaultRuntime}}')" = oomclamp ] ||
    die "dockerd's default runtime is not oomclamp (a conflicting /etc/docker/daemon.json?)" "$RUN/dockerd.log"
}

# --- the four binaries ----------------------------------------------------------------------------------------
binaries_present() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do [ -x "$BIN/$b" ] || return 1; done
}

unpack_binaries() {
  local dir sum want tmp b
  dir=$(dirname "$TARBALL")
  want=$(awk -v f="$(basename "$TARBALL")" '$2 == f || $2 == "*" f {print $1}' "$dir/SHA256SUMS" 2>/dev/null || true)
  [ -n "$want" ] || die "$dir/SHA256SUMS has no line for $(basename "$TARBALL")"
  sum=$(sha256sum "$TARBALL" | awk '{print $1}')
  [ "$sum" = "$want" ] || die "$TARBALL: sha256 $sum, SHA256SUMS says $want"
  case " $BAD_TARBALLS " in
    *" $sum "*)
      echo "$TARBALL (sha256 ${sum:0:12}…) holds binaries whose API server crashes (reflect2 v1.0.1 on Go 1.19)"
      build_binaries
      return 0
      ;;
  esac
  if binaries_present && [ "$(cat "$BIN/.sha256" 2>/dev/null)" = "$sum" ]; then
    echo "binaries unpacked already ($BIN; tarball sha256 ${sum:0:12}… matches SHA256SUMS)"
    return 0
  fi
  echo "unpacking $TARBALL (sha256 matches SHA256SUMS) into $BIN"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/unpack.XXXXXX")
  tar -C "$tmp" -xJf "$TARBALL"
  rm -rf "$BIN"
  mkdir -p "$BIN"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    f=$(find "$tmp" -type f -name "$b" | head -n 1)
    [ -n "$f" ] || { rm -rf "$tmp"; die "$TARBALL holds no $b"; }
    mv "$f" "$BIN/$b"
    chmod 755 "$BIN/$b"
  done
  rm -rf "$tmp"
  echo "$want" >"$BIN/.sha256"
}

# §5.2: Debian's kubernetes source package (1.20.5+really1.20.2, full vendor/), built in GOPATH mode (~6 min).
# An isolated deb-src list keeps the system's apt configuration unchanged.
# The vendored github.com/modern-go/reflect2 v1.0.1 is replaced with Debian's 1.0.2 (golang-github-modern-go-
# reflect2-dev), which works with Go >= 1.18 (see BAD_TARBALLS above).
build_binaries() {
  local src=$CACHE/src mirror apto tree
  if binaries_present && [ "$(cat "$BIN/.sha256" 2>/dev/null)" = "$SOURCE_BUILD" ]; then
    echo "binaries built from source already ($BIN, reflect2 1.0.2)"
    return 0
  fi
  echo "building from Debian's kubernetes source package, with reflect2 1.0.2 (about 6-10 min)"
  apt_install golang-go dpkg-dev rsync make golang-github-modern-go-reflect2-dev
  mkdir -p "$src/lists/partial" "$src/home"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  # the machine's own Debian mirror: from deb822 sources, else from a one-line sources.list
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1 || true)
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list.d/debian.sources or sources.list"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" >"$src/src.list"
  apto=(-o "Dir::Etc::SourceList=$src/src.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$src/lists")
  tree=$(find "$src" -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n 1)
  if [ -z "$tree" ]; then
    (cd "$src" && apt-get "${apto[@]}" update -qq && apt-get "${apto[@]}" source -qq kubernetes >/dev/null)
    tree=$(find "$src" -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n 1)
  fi
  [ -n "$tree" ] || die "apt-get source kubernetes left no source tree in $src"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
    "$tree/vendor/github.com/modern-go/reflect2/"
  mkdir -p "$tree/.go/src/k8s.io"
  [ -e "$tree/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
  (cd "$tree" && GOPATH=$tree/.go CGO_ENABLED=0 HOME=$src/home \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet" >"$src/build.log" 2>&1) ||
    die "the build failed" "$src/build.log"
  rm -rf "$BIN"
  mkdir -p "$BIN"
  cp "$tree"/_output/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet} "$BIN/"
  echo "$SOURCE_BUILD" >"$BIN/.sha256"
  echo "built the binaries into $BIN (the source tree stays in $src)"
}

# --- the pause image: any static binary that sleeps until SIGINT/SIGTERM and reaps its children -----------------
ensure_pause_image() {
  local d
  if docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
    echo "docker has $PAUSE_IMAGE already"
    return 0
  fi
  command -v gcc >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || apt_install gcc libc6-dev
  d=$(mktemp -d /tmp/conveyor-pause.XXXXXX)
  mkdir -p "$d/root"
  cat >"$d/pause.c" <<'EOF'
/* The pod sandbox's process: holds the pod's namespaces, reaps orphans, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = on_stop;
  if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) return 1;
  sa.sa_handler = on_child;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGCHLD, &sa, NULL) < 0) return 2;
  if (getpid() != 1) fprintf(stderr, "pause: not running as pid 1\n");
  for (;;) pause();
}
EOF
  gcc -Os -static -o "$d/root/pause" "$d/pause.c"
  strip "$d/root/pause" 2>/dev/null || true
  tar -C "$d/root" -c . | docker import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
  rm -rf "$d"
  echo "built $PAUSE_IMAGE (a static pause from a few lines of C)"
}

# --- keys, token, kubeconfig (§5.3); the API server writes its self-signed certificate (with its CA, for
# 127.0.0.1) into $RUN/certs at its first start, and the kubeconfig trusts it ---------------------------------------------------------------------------
ensure_credentials() {
  mkdir -p "$RUN/certs"
  chmod 700 "$STATE" "$RUN"
  if [ ! -s "$RUN/sa.key" ] || [ ! -s "$RUN/sa.pub" ]; then
    openssl genrsa -out "$RUN/sa.key" 2048 2>/dev/null
    openssl rsa -in "$RUN/sa.key" -pubout -out "$RUN/sa.pub" 2>/dev/null
    echo "generated the service-account key pair"
  fi
  if [ ! -s "$RUN/tokens.csv" ]; then
    echo "$(openssl rand -hex 24),admin,admin,system:masters" >"$RUN/tokens.csv"
    chmod 600 "$RUN/tokens.csv"
    echo "generated the admin token"
  fi
  local new
  new=$(
    cat <<EOF
apiVersion: v1
kind: Config
clusters: [{name: conveyor-local, cluster: {server: "$API", certificate-authority: "$RUN/certs/apiserver.crt"}}]
users: [{name: admin, user: {token: $(token)}}]
contexts: [{name: conveyor-local, context: {cluster: conveyor-local, user: admin, namespace: default}}]
current-context: conveyor-local
EOF
  )
  if [ ! -f "$KUBECONFIG_PATH" ] || [ "$(cat "$KUBECONFIG_PATH")" != "$new" ]; then
    printf '%s\n' "$new" >"$KUBECONFIG_PATH"
    chmod 600 "$KUBECONFIG_PATH"
    echo "wrote $KUBECONFIG_PATH"
  fi
}

# --- the daemons ----------------------------------------------------------------------------------------------
start_etcd() {
  # a fresh store on each start: no objects (and so no pods) left from an earlier cluster
  rm -rf "$RUN/etcd-data"
  start_daemon etcd etcd --name local --data-dir "$RUN/etcd-data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster local=http://127.0.0.1:2380
  wait_for 30 env ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 endpoint health ||
    die "etcd is not healthy after 30 s" "$RUN/etcd.log"
}

start_apiserver() {
  start_daemon apiserver "$BIN/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port=6443 --cert-dir="$RUN/certs" --token-auth-file="$RUN/tokens.csv" \
    --authorization-mode=RBAC --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$RUN/sa.pub" --service-account-signing-key-file="$RUN/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true
}

start_kcm() {
  start_daemon kcm "$BIN/kube-controller-manager" --kubeconfig="$KUBECONFIG_PATH" \
    --service-account-private-key-file="$RUN/sa.key" --root-ca-file="$RUN/certs/apiserver.crt" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0 --controllers='*,-nodeipam'
}

start_sched() {
  start_daemon sched "$BIN/kube-scheduler" --kubeconfig="$KUBECONFIG_PATH" --leader-elect=false \
    --bind-address=127.0.0.1 --port=0
}

start_kubelet() {
  mkdir -p /var/lib/kubelet
  start_daemon kubelet "$BIN/kubelet" --kubeconfig="$KUBECONFIG_PATH" --container-runtime=docker \
    --pod-infra-container-image="$PAUSE_IMAGE" --fail-swap-on=false --cgroup-driver=cgroupfs \
    --hostname-override="$NODE" --anonymous-auth=true --authorization-mode=AlwaysAllow --read-only-port=0 \
    --address=127.0.0.1 --root-dir=/var/lib/kubelet --image-gc-high-threshold=100 --eviction-hard=''
}

# the pods' containers and the kubelet's mounts (§5.7)
remove_pod_leftovers() {
  local ids
  if docker info >/dev/null 2>&1; then
    ids=$(docker ps -aq --filter name=k8s_)
    [ -n "$ids" ] && { docker rm -f $ids >/dev/null; echo "removed $(wc -w <<<"$ids") k8s_ containers"; }
  fi
  mount | awk '$3 ~ /^\/var\/lib\/kubelet/ {print $3}' | sort -r | xargs -r -n1 umount 2>/dev/null || true
}

all_running() {
  local d
  for d in $DAEMONS; do running "$d" || return 1; done
}

cmd_up() {
  local t0 d
  t0=$(date +%s%N)
  echo "Kubernetes 1.20.2: state in $RUN, kubeconfig $KUBECONFIG_PATH"

  # packages: etcd and jq from Debian; kubectl only when there is none (Debian's kubernetes-client would replace
  # an unpackaged /usr/bin/kubectl such as the Google Cloud SDK's, which works here too, with a skew warning)
  apt_install etcd-server etcd-client jq curl openssl
  if command -v kubectl >/dev/null; then
    echo "kubectl: $(command -v kubectl)"
  elif apt-cache show kubernetes-client >/dev/null 2>&1; then
    apt_install kubernetes-client
  fi

  # a source build made earlier (the tarball was missing or known bad) is kept; otherwise the tarball, if any
  if binaries_present && [ "$(cat "$BIN/.sha256" 2>/dev/null)" = "$SOURCE_BUILD" ]; then
    echo "binaries built from source already ($BIN, reflect2 1.0.2)"
  elif [ -n "$TARBALL" ] && [ -f "$TARBALL" ]; then
    unpack_binaries
  else
    build_binaries
  fi
  binaries_present || die "the binaries are missing in $BIN"

  write_runc_wrapper
  ensure_dockerd
  ensure_pause_image
  ensure_credentials

  if all_running && api_ready && node_ready && default_sa >/dev/null; then
    echo "etcd, API server, controller manager, scheduler and kubelet run already; node $NODE is Ready"
  else
    if ! running etcd; then
      # everything else depends on the store: a fresh etcd means a fresh start of the rest
      for d in kubelet sched kcm apiserver; do stop_daemon "$d"; done
      remove_pod_leftovers
      start_etcd
    else
      echo "etcd runs already"
    fi
    if running apiserver; then echo "apiserver runs already"; else start_apiserver; fi
    wait_for 60 api_ready || die "the API server is not ready after 60 s ($API/readyz)" "$RUN/apiserver.log"
    echo "API server ready"
    for d in kcm sched kubelet; do
      if running "$d"; then echo "$d runs already"; else "start_$d"; fi
    done
    wait_for 90 node_ready || die "node $NODE is not Ready after 90 s" "$RUN/kubelet.log" "$RUN/kcm.log"
    echo "node $NODE is Ready"
    wait_for 60 default_sa ||
      die "no default service account after 60 s (the controller manager makes it)" "$RUN/kcm.log"
    echo "default service account exists"
  fi
  d=$((($(date +%s%N) - t0) / 100000000))
  echo "Kubernetes is up in $((d / 10)).$((d % 10)) s (export KUBECONFIG=$KUBECONFIG_PATH)"
}

cmd_down() {
  local d
  for d in kubelet sched kcm apiserver etcd; do stop_daemon "$d"; done
  sleep 1
  remove_pod_leftovers
  echo "Kubernetes is down (dockerd left running)"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) all_running ;;
  runc-wrapper)
    # progress to stderr: stdout is the wrapper's path
    command -v jq >/dev/null || apt_install jq >&2
    write_runc_wrapper
    echo "$RUNC_WRAP"
    ;;
  kubeconfig) echo "$KUBECONFIG_PATH" ;;
  *)
    echo "usage: $0 up|down|status|runc-wrapper|kubeconfig" >&2
    exit 2
    ;;
esac
