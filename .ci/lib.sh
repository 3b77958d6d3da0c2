# Shared by .ci/run, .ci/slurm.sh and .ci/k8s.sh (sourced).

# apt-get update at most once per script, and only when something is missing
APT_UPDATED=0
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && { echo "installed already: $*"; return 0; }
  if [ "$APT_UPDATED" = 0 ]; then
    echo "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  echo "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
