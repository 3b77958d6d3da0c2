#!/usr/bin/env bash
# A real single-node Slurm with sacct accounting (slurmctld, slurmd, slurmdbd on MariaDB), as reference/runtimes.md §4
# describes it. No systemd on these machines: the daemons are started by hand and left running (like PostgreSQL).
# Idempotent: where everything is installed, configured and running already, it only checks it.
set -euo pipefail

HOST=$(hostname -s)
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOGS=/var/log/slurm

# apt_install: apt-get update at most once, and only when something is missing
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# a daemon runs when its pid file names a live process
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop the daemon of a pid file (if it runs) and wait up to 10 s for it to go
stop_daemon() {
  local pid
  running "$1" || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

# fail with the tail of the logs that tell why
die() {
  local msg=$1 f
  shift
  echo "slurm.sh: $msg" >&2
  for f in "$@"; do
    [ -s "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 25 "$f" >&2; }
  done
  exit 1
}

# write $1 from stdin when its content differs; returns 0 when it changed
write_if_changed() {
  local new
  new=$(cat)
  if [ -f "$1" ] && [ "$(cat "$1")" = "$new" ]; then return 1; fi
  printf '%s\n' "$new" >"$1"
  return 0
}

# --- packages -------------------------------------------------------------------------------------------------
apt_install slurm-wlm slurmdbd
if mysqladmin ping >/dev/null 2>&1; then
  echo "MariaDB/MySQL answers already"
else
  apt_install mariadb-server
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  mkdir -p "$LOGS"
  pgrep -x mariadbd >/dev/null || pgrep -x mysqld >/dev/null ||
    (setsid mysqld_safe --user=mysql >"$LOGS/mysqld_safe.log" 2>&1 &)
  for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
  mysqladmin ping >/dev/null 2>&1 || die "MariaDB did not answer within 30 s" "$LOGS/mysqld_safe.log"
  echo "started MariaDB"
fi

# --- host name: SlurmctldHost and NodeName are the short host name, which must resolve ----------------------------
if getent hosts "$HOST" >/dev/null; then
  echo "$HOST resolves to $(getent hosts "$HOST" | awk '{print $1; exit}')"
else
  echo "127.0.0.1 $HOST" >>/etc/hosts
  echo "added '127.0.0.1 $HOST' to /etc/hosts"
fi

# --- configuration (runtimes.md §4.2 and §4.5, with slurmdbd accounting) -----------------------------------------
mkdir -p /etc/slurm /run/munge /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$LOGS"
chown munge:munge /run/munge
chown slurm:slurm /var/lib/slurm/slurmctld "$LOGS"

# Time limits (measured here): a limit is whole minutes, so `--time=0:10` becomes TimeLimit=00:01:00, and slurmctld
# tests limits only every 30 s (a fixed interval in 22.05, counted from its start; no slurm.conf setting changes it).
# With OverTimeLimit=0 a `--time=0:10` job therefore ends TIMEOUT 60-90 s after it starts (seen: 73 s and 81 s),
# its processes SIGTERMed then, and SIGKILLed KillWait=5 s later.
CONF_CHANGED=0
write_if_changed "$SLURM_CONF" <<EOF && CONF_CHANGED=1 || true
# written by .ci/slurm.sh (reference/runtimes.md §4)
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# without batch_sched_delay=0, batch jobs start on a ~3 s cadence
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobAcctGatherType=jobacct_gather/linux
# accounting in slurmdbd (MariaDB), for sacct; job_comment keeps --comment in the job records
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# finished jobs stay in squeue/scontrol for 5 min
MinJobAge=300
# at its time limit a job gets SIGTERM, then SIGKILL 5 s later; no grace beyond --time
KillWait=5
OverTimeLimit=0
Waittime=0
NodeName=$HOST CPUs=2 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

DBD_CHANGED=0
write_if_changed "$DBD_CONF" <<EOF && DBD_CHANGED=1 || true
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
EOF
chown slurm:slurm "$DBD_CONF"
chmod 600 "$DBD_CONF"
[ "$CONF_CHANGED" = 1 ] && echo "wrote $SLURM_CONF" || echo "$SLURM_CONF is up to date"
[ "$DBD_CHANGED" = 1 ] && echo "wrote $DBD_CONF" || echo "$DBD_CONF is up to date"

# a changed configuration needs the daemons restarted
if [ "$DBD_CHANGED" = 1 ] && running /run/slurmdbd.pid; then echo "restarting slurmdbd"; stop_daemon /run/slurmdbd.pid; fi
if [ "$CONF_CHANGED" = 1 ]; then
  for f in /run/slurmd.pid /run/slurmctld.pid; do
    running "$f" && { echo "stopping $(basename "$f" .pid) (configuration changed)"; stop_daemon "$f"; }
  done
fi

# --- munge ----------------------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  echo "created /etc/munge/munge.key"
fi
if pgrep -x munged >/dev/null; then
  echo "munged is running already"
else
  runuser -u munge -- /usr/sbin/munged
  echo "started munged"
fi
munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed)" /var/log/munge/munged.log

# --- database and slurmdbd ------------------------------------------------------------------------------------
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
if running /run/slurmdbd.pid; then
  echo "slurmdbd is running already"
else
  /usr/sbin/slurmdbd
  echo "started slurmdbd"
fi
for _ in $(seq 120); do (echo >/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.25; done
(echo >/dev/tcp/127.0.0.1/6819) 2>/dev/null || die "slurmdbd does not listen on 6819 after 30 s" "$LOGS/slurmdbd.log"

if sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx local; then
  echo "cluster 'local' is registered already"
else
  out=$(sacctmgr -i add cluster local 2>&1) || grep -qi "already exists" <<<"$out" ||
    die "sacctmgr add cluster local failed: $out" "$LOGS/slurmdbd.log"
  echo "registered cluster 'local' in slurmdbd"
fi

# --- slurmctld and slurmd ---------------------------------------------------------------------------------------
if running /run/slurmctld.pid; then echo "slurmctld is running already"; else /usr/sbin/slurmctld; echo "started slurmctld"; fi
if running /run/slurmd.pid; then echo "slurmd is running already"; else /usr/sbin/slurmd; echo "started slurmd"; fi

state=
for _ in $(seq 120); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  case $state in idle | mixed | allocated) break ;; esac
  sleep 0.25
done
case $state in
  idle | mixed | allocated) echo "node $HOST is $state" ;;
  *) die "node $HOST is not idle after 30 s (sinfo -h -o %T: '${state:-no answer}')" \
       "$LOGS/slurmctld.log" "$LOGS/slurmd.log" ;;
esac

# --- sanity check: a job runs and sacct records it --------------------------------------------------------------
job=$(sbatch --parsable --output=/dev/null --job-name=slurm.sh-check --wrap 'echo ok') ||
  die "sbatch failed" "$LOGS/slurmctld.log"
job=${job%%;*}
acct=
for _ in $(seq 60); do
  acct=$(sacct -j "$job" -n -X -o State 2>/dev/null | tr -d ' ' || true)
  [ "$acct" = COMPLETED ] && break
  sleep 0.5
done
[ "$acct" = COMPLETED ] ||
  die "check job $job: sacct says '${acct:-nothing}' after 30 s, not COMPLETED" "$LOGS/slurmctld.log" \
    "$LOGS/slurmd.log" "$LOGS/slurmdbd.log"
echo "check job $job COMPLETED and is in sacct"
