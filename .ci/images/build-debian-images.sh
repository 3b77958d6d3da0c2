#!/usr/bin/env bash
# Builds two stock Debian images, as users have them, with debootstrap from this machine's own Debian mirror (no
# container registry; runtimes.md §2.2), and imports them into each engine given:
#
#   conveyor/debian:bullseye-python   minbase bullseye + python3: Python 3.9, no git, no pip
#   conveyor/debian:bookworm-bare     minbase bookworm: no Python, no git (apt installs Python at container start)
#
#   .ci/images/build-debian-images.sh docker [podman]
#
# The mirror is read from the machine's apt sources, and the images keep it in their own sources, so that apt inside a
# container (with --network host) reaches the same mirror. ~1-2 min on 2 cores, ~250 MB per image and engine.
# Needs: debootstrap, and root.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: build-debian-images.sh docker|podman [docker|podman]" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-debian-images: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
for engine in "$@"; do
  command -v "$engine" >/dev/null || { echo "build-debian-images: no $engine command" >&2; exit 2; }
done

# The first archive URI of the machine's apt sources that is not a security archive: deb822 (*.sources, URIs:) first,
# then the one-line format (sources.list, *.list).
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { uri = ""; suites = ""
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
             if ($i ~ /^Suites:/) suites = $i }
           if (uri != "" && suites !~ /security/) { print uri; exit } }' "$f"
  done | head -n 1
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f"
  done | head -n 1
}
MIRROR=$(mirror | head -n 1)
[ -n "$MIRROR" ] || { echo "build-debian-images: no Debian mirror found in /etc/apt/sources.list{,.d/}" >&2; exit 2; }

WORK=$(mktemp -d /tmp/conveyor-debian-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# build SUITE TAG CHECK [--include=...]: debootstrap, tidy, import into every engine, check with CHECK (a shell line)
build() {
  local suite=$1 tag=$2 check=$3; shift 3
  local root="$WORK/$suite" started=$SECONDS
  debootstrap --variant=minbase "$@" "$suite" "$root" "$MIRROR" >"$WORK/$suite.log" 2>&1 \
    || { tail -n 20 "$WORK/$suite.log" >&2; echo "build-debian-images: debootstrap $suite failed" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  for engine in "${ENGINES[@]}"; do
    local old quiet=()
    old=$("$engine" image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
    [ "$(basename "$engine")" = podman ] && quiet=(--quiet)
    tar -C "$root" -cf - . | "$engine" import "${quiet[@]}" -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
    "$engine" run --rm --network none "$tag" sh -c "$check" >/dev/null \
      || { echo "build-debian-images: $tag does not pass its check ($check) with $engine" >&2; exit 1; }
    new=$("$engine" image inspect -f '{{.Id}}' "$tag")
    { [ -n "$old" ] && [ "$old" != "$new" ] && "$engine" rmi "$old" >/dev/null 2>&1; } || true
    echo "built $tag with $engine ($("$engine" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'), $((SECONDS - started)) s)"
  done
}

ENGINES=("$@")
build bullseye conveyor/debian:bullseye-python 'python3 -c "import sys; assert sys.version_info[:2] == (3, 9)" && ! command -v git' \
  --include=python3
build bookworm conveyor/debian:bookworm-bare '! command -v python3 && ! command -v git && command -v apt-get'
