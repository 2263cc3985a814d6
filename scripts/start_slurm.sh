#!/usr/bin/env bash
# Install (Debian) and start a single-node SLURM cluster on this machine, for the tests that run
# the App with --plugin SLURM. Needs root. Idempotent: does nothing if sinfo already answers.
# Usage: bash scripts/start_slurm.sh [STATE_DIR]   (stop: bash scripts/start_slurm.sh --stop)
set -euo pipefail
state=${SLURM_STATE_DIR:-/tmp/ketamine-dti-slurm}
if [ "${1:-}" = "--stop" ]; then
  for pid in "$state"/slurmd.pid "$state"/slurmctld.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  exit 0
fi
if command -v sinfo >/dev/null && timeout 10 sinfo -h -o %T 2>/dev/null | grep -q idle; then
  echo "SLURM already running"; exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi
mkdir -p "$state"/spool "$state"/ctld /etc/slurm
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ketamine-dti
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
MpiDefault=none
NodeName=localhost CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p /run/munge && chown munge:munge /run/munge
[ -f /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged --force" || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "SLURM up"; exit 0; fi
  sleep 1
done
echo "SLURM did not come up; see $state/*.log" >&2
exit 1
