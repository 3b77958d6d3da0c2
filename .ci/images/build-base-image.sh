#!/usr/bin/env bash
# Builds the small local base image for container tasks, without any registry: the host's own Debian
# Python 3 (interpreter, standard library, the shared libraries they load), git with its helpers, bash and
# busybox for the shell tools, imported as a one-layer image (runtimes.md §2.2, "slim image"). ~2-4 s, ~100 MB.
#
#   .ci/images/build-base-image.sh docker|podman TAG      e.g. docker conveyor/base:bookworm
#
# Needs on the host: python3 (Debian's), git, bash, busybox (busybox-static); ssh is added when present.
set -euo pipefail

ENGINE=${1:?usage: build-base-image.sh docker|podman TAG}
TAG=${2:?usage: build-base-image.sh docker|podman TAG}
PY=$(readlink -f "${PYTHON:-/usr/bin/python3}")
PYVER=$(basename "$PY")  # python3.11
BUSYBOX=$(command -v busybox || true)
for need in "$PY" /usr/bin/git /usr/lib/git-core /usr/lib/"$PYVER" "$BUSYBOX"; do
  [ -e "$need" ] || { echo "build-base-image: $need is missing on this host (install python3, git, busybox-static)" >&2; exit 2; }
done
command -v "$ENGINE" >/dev/null || { echo "build-base-image: no $ENGINE command" >&2; exit 2; }

R=$(mktemp -d /tmp/conveyor-base-image.XXXXXX)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,usr/bin,usr/lib,usr/share,etc/ssl/certs,tmp,root,var/tmp,dev,proc,sys}
chmod 1777 "$R/tmp" "$R/var/tmp"

# Python: interpreter and standard library, without the 25 MB static libpython (nothing links against it here).
cp -a "$PY" "$R/usr/bin/"
ln -s "$PYVER" "$R/usr/bin/python3"
tar -C /usr/lib --exclude='config-*/*.a' --exclude="$PYVER/test" -cf - "$PYVER" | tar -C "$R/usr/lib" -xf -
rm -f "$R/usr/lib/$PYVER/EXTERNALLY-MANAGED"

# git (tar keeps git-core's many hard links as links), its templates; bash for setup scripts; ssh for git over ssh.
tar -C / -cf - usr/bin/git usr/lib/git-core usr/share/git-core | tar -C "$R" -xf -
cp -a "$(readlink -f /bin/bash)" "$R/usr/bin/bash"
ln -s ../usr/bin/bash "$R/bin/bash"
SSH=$(command -v ssh || true)
[ -n "$SSH" ] && cp -a "$(readlink -f "$SSH")" "$R/usr/bin/ssh"

# Debian's merged /usr: /lib and /lib64 are links into /usr, as on the host (the libraries below go through them).
for d in lib lib64; do
  if [ -L "/$d" ]; then mkdir -p "$R/usr/$d"; ln -s "usr/$d" "$R/$d"; fi
done

# The shared libraries of every ELF file copied above, and the base libraries a Linux wheel may expect.
{
  for f in "$PY" /usr/bin/git /bin/bash ${SSH:+"$SSH"} "$R/usr/lib/$PYVER"/lib-dynload/*.so "$R"/usr/lib/git-core/*; do
    [ -f "$f" ] && [ -x "$f" -o "${f%.so}" != "$f" ] && ldd "$f" 2>/dev/null || true
  done
  # glibc's libraries and the C++ runtime, which manylinux wheels (psutil, orjson, numpy...) may load
  for g in /lib/*/libgcc_s.so.1 /lib/*/libstdc++.so.6 $(dpkg -L libc6 2>/dev/null | grep -E '^/lib/[^/]+/lib[^/]*\.so[.0-9]*$'); do
    [ -e "$g" ] && echo "lib => $g"
  done
} | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | sort -u | while read -r lib; do
  cp --parents -L "$lib" "$R/"
done
# busybox for the usual tools (sh, ls, cat, env, sleep, ...), without shadowing bash or git.
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do
  [ -e "$R/bin/$a" ] || [ -e "$R/usr/bin/$a" ] || ln -s busybox "$R/bin/$a"
done

cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"

OLD=$("$ENGINE" image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
QUIET=(); [ "$(basename "$ENGINE")" = podman ] && QUIET=(--quiet)  # podman reports its copy progress otherwise
tar -C "$R" -cf - . | "$ENGINE" import "${QUIET[@]}" \
  -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'ENV LANG=C.UTF-8' -c 'ENV HOME=/root' -c 'WORKDIR /root' \
  -c 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
"$ENGINE" run --rm --network none "$TAG" sh -c 'python3 -c "import ssl, sqlite3, venv, zlib, ctypes; ctypes.CDLL(\"libpthread.so.0\")" && git --version' >/dev/null
# A rebuild leaves the previous image untagged: remove it unless a container still uses it.
NEW=$("$ENGINE" image inspect -f '{{.Id}}' "$TAG")
[ -n "$OLD" ] && [ "$OLD" != "$NEW" ] && "$ENGINE" rmi "$OLD" >/dev/null 2>&1 || true
echo "built $TAG with $ENGINE ($("$ENGINE" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
