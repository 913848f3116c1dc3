#!/usr/bin/env bash
# testcluster.sh - a real Slurm cluster (one node, plus three more slurmd for multi-node jobs) and an OpenSSH server on loopback.
#
# For integration tests of dagster-slurm on a Debian 12 machine where we are root and
# PID 1 is not systemd (so every daemon is started by hand, in order):
#
#   munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd (vm, n1..n3) -> sshd -> sshd (OTP)
#
# The second sshd (port $TESTCLUSTER_OTP_PORT) behaves like many HPC login nodes: it demands
# the key AND a one-time code (TOTP through PAM/pam_oath); see write_otp_files.
#
# Usage: scripts/testcluster.sh install|start|stop|status|env|packages|restart
#
#   install  apt-install the packages (if missing) and write users, keys and configs
#   start    install if needed, then start every daemon that is not running (idempotent)
#   stop     cancel all jobs, then stop the daemons by pid file (idempotent)
#   status   exit 0 only if every daemon answers
#   env      print `export` lines to connect to the cluster (eval "$(testcluster.sh env)")
#   packages print the Debian packages it installs (one per line)
#   restart  stop + start
#
# Environment:
#   TESTCLUSTER_DIR       private state dir (default /var/lib/dagster-slurm-testcluster)
#   TESTCLUSTER_SSH_PORT  sshd port on 127.0.0.1 (default 2222)
#   TESTCLUSTER_OTP_PORT  port of the key+one-time-code sshd on 127.0.0.1 (default 2223)
#   TESTCLUSTER_CGROUP    auto|yes|no: use cgroup plugins (auto: try, fall back if slurmd refuses)
#   TESTCLUSTER_TIMEOUT   seconds to wait for each daemon (default 60)
#   SLURM_DEPLOYMENT_BASE_PATH  value printed by `env` (default /home/slurmuser/dagster-slurm)
#
# Our own state (sshd config + host key, test user's key pair and password, known_hosts,
# env file) lives in $TESTCLUSTER_DIR; Slurm config goes to /etc/slurm as Debian expects.
# /var/spool/slurmctld is never wiped (job ids would restart at 1 while the DB keeps old ones).
set -euo pipefail

# ----------------------------------------------------------------------------- settings
TESTCLUSTER_DIR="${TESTCLUSTER_DIR:-/var/lib/dagster-slurm-testcluster}"
SSH_PORT="${TESTCLUSTER_SSH_PORT:-2222}"
OTP_PORT="${TESTCLUSTER_OTP_PORT:-2223}"
CGROUP_WANTED="${TESTCLUSTER_CGROUP:-auto}"
WAIT_TIMEOUT="${TESTCLUSTER_TIMEOUT:-60}"
DEPLOYMENT_BASE_PATH="${SLURM_DEPLOYMENT_BASE_PATH:-/home/slurmuser/dagster-slurm}"

SSH_HOST=127.0.0.1
TEST_USER=slurmuser
TEST_HOME=/home/$TEST_USER
SLURM_ACCOUNT=dagster
CLUSTER_NAME=testcluster
NODE_NAME="$(hostname -s)"
# Three more compute nodes on this machine, each a slurmd of its own (own port, spool, pid and log, own
# loopback address 127.0.0.2..4), in a partition of their own for multi-node jobs (srun, torchrun, Ray).
# They share the hostname, so services started per node need distinct ports.
MULTI_NODES=(n1 n2 n3)
MULTI_PORT_BASE=17001
MULTI_PARTITION=multinode
# GPUs as a GRES on stand-in device files (this machine has no GPU), so that --gpus-per-node is scheduled
# and accounted (AllocTRES gres/gpu) as on a GPU cluster.
NODE_GPUS=2
MULTI_GPUS=1

# openssh-client: the readiness probes run ssh, and forky's openssh-server no longer pulls it in.
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server openssh-server openssh-client
    libpam-oath oathtool)

SLURM_ETC=/etc/slurm
SLURM_LOG_DIR=/var/log/slurm
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_LOG=$SLURM_LOG_DIR/slurmd-$NODE_NAME.log
LEGACY_SLURMD_PID=/run/slurmd.pid   # one slurmd only, before the multi-node partition
SLURMDBD_PID=/run/slurmdbd.pid
MUNGE_PID=/run/munge/munged.pid
MUNGE_LOG=/var/log/munge/munged.log
MYSQL_RUN=/run/mysqld
MYSQL_PID=$MYSQL_RUN/mysqld.pid
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
MYSQL_LOG=/var/log/mysql/error.log

# Files in the private dir.
SSHD_CONFIG=$TESTCLUSTER_DIR/sshd_config
SSHD_HOSTKEY=$TESTCLUSTER_DIR/ssh_host_ed25519_key
SSHD_PID=$TESTCLUSTER_DIR/sshd.pid
SSHD_LOG=$TESTCLUSTER_DIR/sshd.log
USER_KEY=$TESTCLUSTER_DIR/id_ed25519
PASSWORD_FILE=$TESTCLUSTER_DIR/password
DB_PASSWORD_FILE=$TESTCLUSTER_DIR/db_password
KNOWN_HOSTS=$TESTCLUSTER_DIR/known_hosts
ENV_FILE=$TESTCLUSTER_DIR/env.sh
CGROUP_MODE_FILE=$TESTCLUSTER_DIR/cgroup_mode
LOCK_FILE=$TESTCLUSTER_DIR/lock
# The key+OTP sshd: same host key, user and known_hosts file as the first one.
OTP_SSHD_CONFIG=$TESTCLUSTER_DIR/sshd_otp_config
OTP_SSHD_PID=$TESTCLUSTER_DIR/sshd_otp.pid
OTP_SSHD_LOG=$TESTCLUSTER_DIR/sshd_otp.log
OTP_SECRET_FILE=$TESTCLUSTER_DIR/otp_secret        # hex TOTP secret, made once
OTP_CODE_CMD=$TESTCLUSTER_DIR/otp_code             # prints a code pam_oath accepts now
OTP_ASKPASS=$TESTCLUSTER_DIR/otp_askpass           # SSH_ASKPASS wrapper around otp_code
# OpenSSH 9.2 has no PAMServiceName: with UsePAM yes sshd always uses the service "sshd".
# Only the OTP sshd has UsePAM yes, so this file affects nothing else we run.
PAM_SSHD=/etc/pam.d/sshd
PAM_SSHD_BACKUP=/etc/pam.d/sshd.orig-testcluster
OATH_USERS=/etc/users.oath                         # pam_oath rewrites it on every login
OATH_WINDOW=20

# Set by write_configs when a config file's content changed (daemon must be restarted).
SLURM_CONF_CHANGED=0
SLURMDBD_CONF_CHANGED=0
SSHD_CONF_CHANGED=0
OTP_SSHD_CONF_CHANGED=0   # also set when the PAM file or the oath users file changed

# ----------------------------------------------------------------------------- helpers
log() { printf 'testcluster: %s\n' "$*" >&2; }
die() { printf 'testcluster: ERROR: %s\n' "$*" >&2; exit 1; }

# Take an exclusive lock so concurrent invocations (e.g. parallel test workers) serialise.
# Daemons are launched with fd 9 closed so they never hold it.
LOCKED=0
take_lock() {
    ((LOCKED)) && return 0
    LOCKED=1
    mkdir -p "$TESTCLUSTER_DIR"
    exec 9>"$LOCK_FILE"
    flock -w 600 9 || die "could not lock $LOCK_FILE"
}

# pid_alive PIDFILE COMM: true if the pid file names a live (non-zombie) process called COMM.
# kill -0 is not enough: PID 1 reaps orphans only every 1-2 s, and pids can be reused.
# A pidfile outlives its daemon (a reboot, a new PID namespace of slurm-matrix.sh), and its pid can come back
# as another process of the same name (the first sshd holding the OTP sshd's old pid): the process counts only
# if it started before its pidfile was written, as a daemon writes its pidfile once it runs.
pid_alive() {
    local pidfile=$1 comm=$2 pid state started written
    pid=$( { tr -dc '0-9' <"$pidfile"; } 2>/dev/null) || return 1
    [[ -n $pid && -d /proc/$pid ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]] || return 1
    started=$(process_start "$pid") && written=$(stat -c %Y "$pidfile" 2>/dev/null) || return 1
    ((started <= written + 1))
}

# process_start PID: when PID started, in seconds since the epoch (/proc/PID/stat field 22 is in clock
# ticks since boot; the command name in field 2 may hold spaces, so fields are counted after its ')').
process_start() {
    local stat ticks btime
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    ticks=$(awk '{print $20}' <<<"${stat##*) }")
    btime=$(awk '/^btime/ {print $2}' /proc/stat)
    [[ -n $ticks && -n $btime ]] || return 1
    echo $((btime + ticks / $(getconf CLK_TCK)))
}

# wait_for NAME LOGFILE PIDFILE COMM CMD...: poll CMD until it succeeds; fail (naming the
# daemon, with the tail of its log) after WAIT_TIMEOUT, or early once the daemon has died.
wait_for() {
    local name=$1 logfile=$2 pidfile=$3 comm=$4; shift 4
    local t0=$SECONDS why=""
    while ! "$@" >/dev/null 2>&1; do
        if ((SECONDS - t0 >= WAIT_TIMEOUT)); then
            why="did not come up within ${WAIT_TIMEOUT}s"
        elif ((SECONDS - t0 >= 3)) && ! pid_alive "$pidfile" "$comm"; then
            why="is not running (exited during startup?)"
        fi
        if [[ -n $why ]]; then
            log "$name $why; last lines of $logfile:"
            tail -n 15 "$logfile" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
}

# stop_pidfile NAME PIDFILE COMM: TERM the process, wait (bounded), KILL if needed.
stop_pidfile() {
    local name=$1 pidfile=$2 comm=$3 pid i
    if ! pid_alive "$pidfile" "$comm"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$( { tr -dc '0-9' <"$pidfile"; } 2>/dev/null) || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do          # up to 30 s
        pid_alive "$pidfile" "$comm" || { rm -f "$pidfile"; return 0; }
        sleep 0.2
    done
    log "$name did not exit after TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
    rm -f "$pidfile"
}

# launch NAME OUTFILE CMD...: run a self-daemonizing CMD in its own session, its stdio away
# from our caller's pipes (and fd 9, the lock, closed); it returns once the daemon has forked.
launch() {
    local name=$1 outfile=$2; shift 2
    if ! setsid "$@" </dev/null >>"$outfile" 2>&1 9>&-; then
        log "$name failed to start; last lines of $outfile:"
        tail -n 15 "$outfile" >&2 || true
        exit 1
    fi
}

# write_if_changed FILE MODE OWNER: write stdin to FILE; return 0 if its content changed.
write_if_changed() {
    local file=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"; chown "$owner" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

random_secret() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

# known_hosts patterns for a port on $SSH_HOST (bare host names for port 22).
host_patterns() {
    if [[ $1 == 22 ]]; then printf '%s\n' "$SSH_HOST" localhost
    else printf '%s\n' "[$SSH_HOST]:$1" "[localhost]:$1"; fi
}

# ----------------------------------------------------------------------------- install
packages_missing() {
    local p status
    for p in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || return 0
    done
    return 1
}

install_packages() {
    packages_missing || return 0
    log "installing packages: ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}")
    if ! "${apt[@]}" >/tmp/testcluster-apt.log 2>&1 9>&-; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >>/tmp/testcluster-apt.log 2>&1 9>&- || { tail -n 20 /tmp/testcluster-apt.log >&2; die "apt-get update failed"; }
        "${apt[@]}" >>/tmp/testcluster-apt.log 2>&1 9>&- || { tail -n 20 /tmp/testcluster-apt.log >&2; die "apt-get install failed (log: /tmp/testcluster-apt.log)"; }
    fi
}

# ----------------------------------------------------------------------------- setup
setup_dirs() {
    chmod 0755 "$TESTCLUSTER_DIR"
    id slurm >/dev/null 2>&1 || die "user 'slurm' missing (slurm packages not installed?)"
    mkdir -p "$SLURM_ETC" "$SLURM_LOG_DIR" /var/spool/slurmctld /run/sshd
    local node
    for node in "$NODE_NAME" "${MULTI_NODES[@]}"; do mkdir -p "/var/spool/slurmd/$node"; done
    chown slurm:slurm "$SLURM_LOG_DIR" /var/spool/slurmctld
    chmod 0755 /run/sshd
    # munge: /run/munge for the socket, key 0600 munge:munge in a 0700 directory.
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    chmod 0755 /run/munge
    chmod 0700 /var/log/munge /var/lib/munge /etc/munge
    touch "$MUNGE_LOG"; chown munge:munge "$MUNGE_LOG"; chmod 0640 "$MUNGE_LOG"
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
    # MariaDB
    mkdir -p "$MYSQL_RUN" /var/log/mysql
    chown mysql:mysql "$MYSQL_RUN" /var/log/mysql
}

setup_test_user() {
    if ! id "$TEST_USER" >/dev/null 2>&1; then
        log "creating user $TEST_USER"
        useradd --create-home --home-dir "$TEST_HOME" --shell /bin/bash "$TEST_USER"
    fi
    mkdir -p "$TEST_HOME"
    chown "$TEST_USER:$TEST_USER" "$TEST_HOME"
    chmod 0755 "$TEST_HOME"

    # Password: generated once, reused later.
    if [[ ! -s $PASSWORD_FILE ]]; then
        (umask 077; random_secret >"$PASSWORD_FILE")
    fi
    chmod 0600 "$PASSWORD_FILE"
    # (Re)setting it every time is cheap and also unlocks the account for key login (UsePAM no).
    printf '%s:%s\n' "$TEST_USER" "$(cat "$PASSWORD_FILE")" | chpasswd

    # Key pair: private key in the private dir, public key in authorized_keys.
    if [[ ! -s $USER_KEY ]]; then
        ssh-keygen -q -t ed25519 -N '' -C "$TEST_USER@testcluster" -f "$USER_KEY"
    fi
    chmod 0600 "$USER_KEY"; chmod 0644 "$USER_KEY.pub"
    install -d -m 0700 -o "$TEST_USER" -g "$TEST_USER" "$TEST_HOME/.ssh"
    if ! grep -qxF "$(cat "$USER_KEY.pub")" "$TEST_HOME/.ssh/authorized_keys" 2>/dev/null; then
        cat "$USER_KEY.pub" >>"$TEST_HOME/.ssh/authorized_keys"
    fi
    chown "$TEST_USER:$TEST_USER" "$TEST_HOME/.ssh/authorized_keys"
    chmod 0600 "$TEST_HOME/.ssh/authorized_keys"

    # An unwritable directory for tests of bad base paths.
    install -d -m 0755 -o root -g root "$TEST_HOME/readonly"
}

# Which cgroup mode the Slurm config uses: "cgroup" or "fallback" (remembered across runs).
cgroup_mode() {
    case $CGROUP_WANTED in
        yes) echo cgroup ;;
        no) echo fallback ;;
        *) if [[ -s $CGROUP_MODE_FILE ]]; then cat "$CGROUP_MODE_FILE"; else echo cgroup; fi ;;
    esac
}

# One line per extra node: its own slurmd port and its own loopback address (127.0.0.2, .3, ...), so that
# engines which tell nodes apart by address (Ray) see distinct nodes; all of 127.0.0.0/8 is this machine.
multi_node_lines() {
    local i
    for i in "${!MULTI_NODES[@]}"; do
        echo "NodeName=${MULTI_NODES[$i]} NodeHostname=$NODE_NAME NodeAddr=127.0.0.$((i + 2)) Port=$((MULTI_PORT_BASE + i)) CPUs=1 RealMemory=$1 Gres=gpu:$MULTI_GPUS State=UNKNOWN"
    done
}

# ----------------------------------------------------------------------------- what the host shows
# Each adaptation to a Slurm release or a host is decided from what this host shows, never from a list of
# releases.

# slurmd's version as a comparable number: "slurm-wlm 24.11.5" -> 2411.
slurm_version() { slurmd -V 2>/dev/null | awk '{split($2, v, "."); printf "%d%02d\n", v[1], v[2]}'; }

# Where 127.0.0.1 is the only IPv4 address (a fresh network namespace, some sandboxes), Slurm >= 24.11's
# getaddrinfo(AF_INET, AI_ADDRCONFIG) fails ("Address family not supported by protocol"); `getent ahostsv4`
# makes the same call. EnableIPv6 (in slurm.conf AND slurmdbd.conf) makes Slurm ask for any family.
communication_line() {
    if ! getent ahostsv4 localhost >/dev/null 2>&1; then echo "CommunicationParameters=EnableIPv6"; fi
}

# SchedulerParameters: the job state cache where squeue can ask it (--only-job-state, Slurm >= 24.05), as sites
# that want light polling configure it (older releases do not know it).
scheduler_parameters() {
    local params=batch_sched_delay=0
    squeue --help 2>/dev/null | grep -q -- --only-job-state && params+=,enable_job_state_cache
    echo "SchedulerParameters=$params"
}

# cgroup.conf for MODE. Without cgroups, Slurm >= 23.11 still loads the cgroup plugin (and dies without a
# cgroup filesystem) unless told CgroupPlugin=disabled, a value older releases refuse. On a cgroup v2 host
# with no systemd/dbus (every test host: PID 1 is not systemd), slurmd needs IgnoreSystemd=yes.
cgroup_conf() {
    local mode=$1
    echo "# Written by scripts/testcluster.sh ($mode mode)"
    if [[ $mode == fallback ]]; then
        (($(slurm_version) >= 2311)) && echo "CgroupPlugin=disabled"
        return 0
    fi
    echo "CgroupPlugin=autodetect"
    if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then
        echo "IgnoreSystemd=yes"
    fi
    echo "ConstrainCores=yes"
    echo "ConstrainRAMSpace=yes"
}

write_slurm_conf() {
    local mode=$1 hw cpus boards sockets cores threads mem realmem defmem
    hw=$(slurmd -C | head -n 1)
    field() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$hw"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    [[ -n $cpus && -n $mem ]] || die "could not parse 'slurmd -C': $hw"
    realmem=$((mem * 9 / 10))
    # 2048 MB per CPU by default, less on small nodes so at least 8 one-CPU jobs fit.
    defmem=$((realmem / 8)); ((defmem > 2048)) && defmem=2048

    local proctrack task gather_params=""
    if [[ $mode == cgroup ]]; then
        proctrack=proctrack/cgroup; task=task/cgroup,task/affinity
    else
        proctrack=proctrack/linuxproc; task=task/none
        gather_params="JobAcctGatherParams=OverMemoryKill"
    fi

    write_if_changed "$SLURM_ETC/slurm.conf" 0644 root:root <<EOF && SLURM_CONF_CHANGED=1 || true
# Written by scripts/testcluster.sh (dagster-slurm test cluster). Edits are overwritten.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost(127.0.0.1)
$(communication_line)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$SLURM_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5

# Process tracking / resource enforcement ($mode mode)
ProctrackType=$proctrack
TaskPlugin=$task

# Scheduling
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
SchedulerType=sched/backfill
$(scheduler_parameters)
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$defmem

# Accounting through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=2
$gather_params
JobCompType=jobcomp/none
GresTypes=gpu
AccountingStorageTRES=gres/gpu

NodeName=$NODE_NAME NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$realmem Gres=gpu:$NODE_GPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP PreemptMode=OFF
PartitionName=batch Nodes=$NODE_NAME Default=NO MaxTime=INFINITE State=UP PreemptMode=OFF
# Preemption, for real PREEMPTED jobs: a job in highprio cancels lowprio jobs on the node it needs;
# short ends jobs at 1 minute (TIMEOUT) whatever they ask for
PartitionName=lowprio Nodes=$NODE_NAME Default=NO MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL
PartitionName=highprio Nodes=$NODE_NAME Default=NO MaxTime=INFINITE State=UP PriorityTier=100 PreemptMode=OFF
PartitionName=short Nodes=$NODE_NAME Default=NO MaxTime=1 State=UP PreemptMode=OFF
$(multi_node_lines "$((defmem * 2))")
PartitionName=$MULTI_PARTITION Nodes=n[1-${#MULTI_NODES[@]}] Default=NO MaxTime=INFINITE State=UP PreemptMode=OFF
EOF

    cgroup_conf "$mode" | write_if_changed "$SLURM_ETC/cgroup.conf" 0644 root:root && SLURM_CONF_CHANGED=1 || true
    # slurmd counts a GPU per device file (a bare Count= registers 0 GPUs: the node goes INVAL, seen on 22.05).
    # Ours are character devices with /dev/null's numbers (nothing to drive); where mknod is refused, empty
    # files do as well (slurmd logs "not a valid character or block device" and counts them anyway).
    local gpu_dir=$TESTCLUSTER_DIR/gpus i node
    mkdir -p "$gpu_dir"
    for ((i = 0; i < NODE_GPUS + ${#MULTI_NODES[@]} * MULTI_GPUS; i++)); do
        [[ -e $gpu_dir/gpu$i ]] || mknod -m 0666 "$gpu_dir/gpu$i" c 1 3 2>/dev/null || touch "$gpu_dir/gpu$i"
    done
    {
        echo "# Written by scripts/testcluster.sh: stand-in GPU device files (this machine has no GPU)"
        echo "NodeName=$NODE_NAME Name=gpu File=$gpu_dir/gpu[0-$((NODE_GPUS - 1))]"
        i=$NODE_GPUS
        for node in "${MULTI_NODES[@]}"; do
            echo "NodeName=$node Name=gpu File=$gpu_dir/gpu[$i-$((i + MULTI_GPUS - 1))]"
            i=$((i + MULTI_GPUS))
        done
    } | write_if_changed "$SLURM_ETC/gres.conf" 0644 root:root && SLURM_CONF_CHANGED=1 || true
}

write_slurmdbd_conf() {
    if [[ ! -s $DB_PASSWORD_FILE ]]; then
        (umask 077; random_secret >"$DB_PASSWORD_FILE")
    fi
    chmod 0600 "$DB_PASSWORD_FILE"
    write_if_changed "$SLURM_ETC/slurmdbd.conf" 0600 slurm:slurm <<EOF && SLURMDBD_CONF_CHANGED=1 || true
# Written by scripts/testcluster.sh
AuthType=auth/munge
$(communication_line)
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=$SLURMDBD_PID
LogFile=$SLURM_LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(cat "$DB_PASSWORD_FILE")
StorageLoc=slurm_acct_db
EOF
}

# What both sshd configs share (the key+password one and the key+one-time-code one).
sshd_common_config() {
    cat <<EOF
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers $TEST_USER
MaxSessions 64
MaxStartups 100:30:200
MaxAuthTries 10
LoginGraceTime 30
ClientAliveInterval 30
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
}

write_ssh_files() {
    if [[ ! -s $SSHD_HOSTKEY ]]; then
        ssh-keygen -q -t ed25519 -N '' -C "testcluster-host" -f "$SSHD_HOSTKEY"
    fi
    chmod 0600 "$SSHD_HOSTKEY"; chmod 0644 "$SSHD_HOSTKEY.pub"

    write_if_changed "$SSHD_CONFIG" 0644 root:root <<EOF && SSHD_CONF_CHANGED=1 || true
# Written by scripts/testcluster.sh
ListenAddress $SSH_HOST
Port $SSH_PORT
HostKey $SSHD_HOSTKEY
PidFile $SSHD_PID
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
$(sshd_common_config)
EOF

    # One known_hosts file for both sshds (same host key).
    local hostkey pat
    hostkey=$(awk '{print $1" "$2}' "$SSHD_HOSTKEY.pub")
    for pat in $(host_patterns "$SSH_PORT") $(host_patterns "$OTP_PORT"); do
        printf '%s %s\n' "$pat" "$hostkey"
    done | write_if_changed "$KNOWN_HOSTS" 0644 root:root || true
}

# The key+OTP sshd: sshd config, PAM stack, pam_oath users file, TOTP secret, code helpers.
#
# Getting a code (secret: TESTCLUSTER_OTP_SECRET, 40 hex digits, TOTP, 30 s, 6 digits):
#   oathtool --totp "$TESTCLUSTER_OTP_SECRET"                      code of the current window
#   oathtool --totp -N "now + 30 seconds" "$TESTCLUSTER_OTP_SECRET"   code of the next window
#   $TESTCLUSTER_DIR/otp_code (root)            a code no login has used yet (see below)
# pam_oath (window=20) accepts the codes of the 20 windows before and after the current one,
# but only codes of a LATER window than the last accepted code: a code is good for one login,
# and after a login with window W's code every code of W or earlier is refused (until it
# falls out of the window). So a test that logs in more than once per 30 s, or right after
# `start` (whose probe logs in), must use codes of ever later windows, e.g. the next window
# after the last used one (otp_code does that by reading the last code from $OATH_USERS).
# Logins cannot run more than 20 windows (10 min) ahead of the clock.
write_otp_files() {
    if [[ ! -s $OTP_SECRET_FILE ]]; then
        (umask 077; head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$OTP_SECRET_FILE")
    fi
    chmod 0600 "$OTP_SECRET_FILE"
    local secret; secret=$(cat "$OTP_SECRET_FILE")

    write_if_changed "$OTP_SSHD_CONFIG" 0644 root:root <<EOF && OTP_SSHD_CONF_CHANGED=1 || true
# Written by scripts/testcluster.sh: key AND one-time code (PAM service "sshd" = $PAM_SSHD)
ListenAddress $SSH_HOST
Port $OTP_PORT
HostKey $SSHD_HOSTKEY
PidFile $OTP_SSHD_PID
UsePAM yes
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication yes
AuthenticationMethods publickey,keyboard-interactive
LogLevel VERBOSE
$(sshd_common_config)
EOF

    # Minimal PAM stack (no pam_loginuid/systemd modules: no systemd, maybe no audit here).
    local pam
    pam=$(cat <<EOF
# Written by scripts/testcluster.sh (dagster-slurm test cluster); original: $PAM_SSHD_BACKUP
auth     required pam_oath.so usersfile=$OATH_USERS window=$OATH_WINDOW digits=6
account  required pam_permit.so
session  required pam_permit.so
password required pam_deny.so
EOF
)
    if [[ -f $PAM_SSHD && ! -e $PAM_SSHD_BACKUP ]] && [[ $(cat "$PAM_SSHD") != "$pam" ]]; then
        log "saving $PAM_SSHD as $PAM_SSHD_BACKUP"
        cp -p "$PAM_SSHD" "$PAM_SSHD_BACKUP"
    fi
    printf '%s\n' "$pam" | write_if_changed "$PAM_SSHD" 0644 root:root && OTP_SSHD_CONF_CHANGED=1 || true

    # pam_oath rewrites this file on each login (tab-separated; fields 5-7 become counter,
    # last accepted code, time), so write it only when our user's line is missing or has
    # another secret; keep other users' lines.
    if ! awk -v u="$TEST_USER" -v s="$secret" '$2 == u && tolower($4) == tolower(s) {f = 1}
            END {exit !f}' "$OATH_USERS" 2>/dev/null; then
        log "writing $OATH_USERS"
        { awk -v u="$TEST_USER" '$2 != u' "$OATH_USERS" 2>/dev/null || true
          printf 'HOTP/T30/6 %s - %s\n' "$TEST_USER" "$secret"
        } | write_if_changed "$OATH_USERS" 0600 root:root || true
        OTP_SSHD_CONF_CHANGED=1
    fi
    chown root:root "$OATH_USERS"; chmod 0600 "$OATH_USERS"

    # otp_code: the current window's code, or, if that window (or a later one) was used
    # already, the code of the window after the last used one. Needs root (reads $OATH_USERS).
    # Not atomic: two logins started at once get the same code and one of them is refused.
    write_if_changed "$OTP_CODE_CMD" 0700 root:root <<EOF || true
#!/bin/bash
# Written by scripts/testcluster.sh: print a TOTP code for $TEST_USER that pam_oath accepts now.
set -euo pipefail
secret=\$(cat $OTP_SECRET_FILE)
now=\$(date +%s)
t=\$now
last=\$(awk '\$2 == "$TEST_USER" {print \$6}' $OATH_USERS 2>/dev/null || true)
if [[ -n \$last ]]; then
    # Codes of the windows now-$OATH_WINDOW .. now+$OATH_WINDOW; k: index of the last used one.
    k=\$(oathtool --totp -w $((2 * OATH_WINDOW)) -N "@\$((now - 30 * $OATH_WINDOW))" "\$secret" |
        awk -v c="\$last" '\$1 == c {k = NR - 1} END {print (k == "" ? -1 : k)}')
    if ((k >= $OATH_WINDOW)); then t=\$((now + 30 * (k - $OATH_WINDOW + 1))); fi
fi
oathtool --totp -N "@\$t" "\$secret"
EOF
    # ssh calls SSH_ASKPASS with the prompt as argument; print a code for each prompt.
    write_if_changed "$OTP_ASKPASS" 0700 root:root <<EOF || true
#!/bin/sh
# Written by scripts/testcluster.sh: SSH_ASKPASS for the key+OTP sshd (prompt in \$1).
exec $OTP_CODE_CMD
EOF
}

# The `env` output; also written to $ENV_FILE (0600, it holds the password).
env_lines() {
    [[ -s $PASSWORD_FILE ]] || die "not set up yet: run '$0 start' first"
    printf 'export SLURM_EDGE_NODE_HOST=%q\n' "$SSH_HOST"
    printf 'export SLURM_EDGE_NODE_PORT=%q\n' "$SSH_PORT"
    printf 'export SLURM_EDGE_NODE_USER=%q\n' "$TEST_USER"
    printf 'export SLURM_EDGE_NODE_KEY_PATH=%q\n' "$USER_KEY"
    printf 'export TESTCLUSTER_PASSWORD=%q\n' "$(cat "$PASSWORD_FILE")"
    printf 'export TESTCLUSTER_KNOWN_HOSTS=%q\n' "$KNOWN_HOSTS"
    printf 'export SLURM_EDGE_NODE_KNOWN_HOSTS=%q\n' "$KNOWN_HOSTS"
    printf 'export SLURM_DEPLOYMENT_BASE_PATH=%q\n' "$DEPLOYMENT_BASE_PATH"
    printf 'export TESTCLUSTER_OTP_PORT=%q\n' "$OTP_PORT"
    [[ -s $OTP_SECRET_FILE ]] && printf 'export TESTCLUSTER_OTP_SECRET=%q\n' "$(cat "$OTP_SECRET_FILE")"
    printf 'export TESTCLUSTER_OTP_SSHD_LOG=%q\n' "$OTP_SSHD_LOG"
}

write_env_file() {
    env_lines | write_if_changed "$ENV_FILE" 0600 root:root || true
}

configure() {
    setup_dirs
    setup_test_user
    write_slurm_conf "$(cgroup_mode)"
    write_slurmdbd_conf
    write_ssh_files
    write_otp_files
    write_env_file
}

# ----------------------------------------------------------------------------- probes
probe_munge() { timeout 5 bash -c 'munge -n | unmunge' >/dev/null 2>&1; }
probe_mysql() { timeout 5 mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; }
probe_slurmdbd() { timeout 10 sacctmgr -n show cluster >/dev/null 2>&1; }
# (sinfo retries ~9 s when no controller listens, so look at the pid file first.)
probe_slurmctld() { pid_alive "$SLURMCTLD_PID" slurmctld && timeout 10 sinfo -h >/dev/null 2>&1; }
# slurmd: our node is registered and usable (idle/mixed/allocated, not down/unknown/'*').
probe_slurmd() {
    local node
    for node in "$NODE_NAME" "${MULTI_NODES[@]}"; do probe_node "$node" || return 1; done
}
probe_node() {
    local state
    pid_alive "/run/slurmd-$1.pid" slurmd && pid_alive "$SLURMCTLD_PID" slurmctld || return 1
    state=$(timeout 10 sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1) || return 1
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}
probe_sshd() { timeout 10 ssh -i "$USER_KEY" -p "$SSH_PORT" -o BatchMode=yes -o ConnectTimeout=5 \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o LogLevel=ERROR \
        "$TEST_USER@$SSH_HOST" true </dev/null >/dev/null 2>&1; }
# OTP sshd, full login (key + code through SSH_ASKPASS). Uses up a TOTP window (see
# write_otp_files), so it runs only when that sshd was (re)started or its auth files changed.
probe_otp_login() {
    SSH_ASKPASS=$OTP_ASKPASS SSH_ASKPASS_REQUIRE=force DISPLAY=:0 timeout 15 setsid \
        ssh -i "$USER_KEY" -p "$OTP_PORT" -o ConnectTimeout=5 -o NumberOfPasswordPrompts=1 \
        -o PreferredAuthentications=publickey,keyboard-interactive -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes -o LogLevel=ERROR \
        "$TEST_USER@$SSH_HOST" true </dev/null >/dev/null 2>&1
}
# OTP sshd, cheap check that burns no code: the key is accepted ("partial success") and
# keyboard-interactive is what the server still wants.
probe_otp_sshd() {
    local out
    out=$(timeout 10 ssh -v -i "$USER_KEY" -p "$OTP_PORT" -o BatchMode=yes -o ConnectTimeout=5 \
        -o PreferredAuthentications=publickey -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes \
        "$TEST_USER@$SSH_HOST" true </dev/null 2>&1) && return 1   # a login without code?!
    grep -q 'with partial success' <<<"$out" &&
        grep -q 'Authentications that can continue: keyboard-interactive' <<<"$out"
}

# ----------------------------------------------------------------------------- start
start_munged() {
    if ! pid_alive "$MUNGE_PID" munged; then
        log "starting munged"
        rm -f "$MUNGE_PID"
        launch munged /var/log/munge/munged.out runuser -u munge -- /usr/sbin/munged
    fi
    wait_for munged "$MUNGE_LOG" "$MUNGE_PID" munged probe_munge
}

start_mariadbd() {
    if ! pid_alive "$MYSQL_PID" mariadbd; then
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            log "initialising MariaDB data directory"
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$MYSQL_LOG" 2>&1 9>&-
        fi
        log "starting mariadbd"
        rm -f "$MYSQL_PID"
        # MariaDB >= 11.8 turns innodb_snapshot_isolation on, which slurmdbd (26.05 warns) does not support:
        # a write conflict would be fatal. "loose-" makes older servers ignore the option.
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
            --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" --log-error="$MYSQL_LOG" \
            --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 \
            --loose-innodb-snapshot-isolation=OFF \
            </dev/null >>/var/log/mysql/mariadbd.out 2>&1 9>&- &
        disown
    fi
    wait_for mariadbd "$MYSQL_LOG" "$MYSQL_PID" mariadbd probe_mysql
    # Database user for slurmdbd (idempotent; keeps the password in sync with slurmdbd.conf).
    local pw; pw=$(cat "$DB_PASSWORD_FILE")
    mariadb --socket="$MYSQL_SOCK" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
    ((SLURMDBD_CONF_CHANGED)) && stop_pidfile slurmdbd "$SLURMDBD_PID" slurmdbd
    if ! pid_alive "$SLURMDBD_PID" slurmdbd; then
        log "starting slurmdbd"
        rm -f "$SLURMDBD_PID"
        launch slurmdbd "$SLURM_LOG_DIR/slurmdbd.out" /usr/sbin/slurmdbd
    fi
    wait_for slurmdbd "$SLURM_LOG_DIR/slurmdbd.log" "$SLURMDBD_PID" slurmdbd probe_slurmdbd
}

# Register the cluster, an account and the test user in the accounting DB (idempotent).
register_accounting() {
    local sam=(timeout 20 sacctmgr -i)
    if [[ -z $("${sam[@]}" -n -P show cluster "$CLUSTER_NAME" format=cluster 2>/dev/null) ]]; then
        log "registering cluster $CLUSTER_NAME"
        "${sam[@]}" add cluster "$CLUSTER_NAME" >/dev/null
    fi
    if [[ -z $("${sam[@]}" -n -P show account "$SLURM_ACCOUNT" format=account 2>/dev/null) ]]; then
        log "adding account $SLURM_ACCOUNT"
        "${sam[@]}" add account "$SLURM_ACCOUNT" cluster="$CLUSTER_NAME" \
            description="dagster-slurm tests" organization=dagster >/dev/null
    fi
    if [[ -z $("${sam[@]}" -n -P show assoc cluster="$CLUSTER_NAME" user="$TEST_USER" format=user 2>/dev/null) ]]; then
        log "adding user $TEST_USER to account $SLURM_ACCOUNT"
        "${sam[@]}" add user "$TEST_USER" account="$SLURM_ACCOUNT" \
            defaultaccount="$SLURM_ACCOUNT" cluster="$CLUSTER_NAME" >/dev/null
    fi
}

start_slurmctld() {
    if ! pid_alive "$SLURMCTLD_PID" slurmctld; then
        log "starting slurmctld"
        rm -f "$SLURMCTLD_PID"
        launch slurmctld "$SLURM_LOG_DIR/slurmctld.out" /usr/sbin/slurmctld
    fi
    wait_for slurmctld "$SLURM_LOG_DIR/slurmctld.log" "$SLURMCTLD_PID" slurmctld probe_slurmctld
}

# Start every slurmd (this machine's node, then the multi-node partition's); returns 1 (instead of
# exiting) if one does not come up, so the caller can retry with the cgroup-less fallback configuration.
start_slurmd() {
    local node
    for node in "$NODE_NAME" "${MULTI_NODES[@]}"; do start_node "$node" || return 1; done
}
start_node() {
    local node=$1 pidfile=/run/slurmd-$1.pid
    if ! pid_alive "$pidfile" slurmd; then
        log "starting slurmd for node $node"
        rm -f "$pidfile"
        (launch "slurmd $node" "$SLURM_LOG_DIR/slurmd-$node.out" /usr/sbin/slurmd -N "$node") || return 1
    fi
    local t0=$SECONDS
    while ! probe_node "$node"; do
        # slurmd died (e.g. refused the cgroup plugins): give up early.
        if ((SECONDS - t0 >= 2)) && ! pid_alive "$pidfile" slurmd; then
            sleep 1
            pid_alive "$pidfile" slurmd || return 1
        fi
        ((SECONDS - t0 < WAIT_TIMEOUT)) || return 1
        # A node left DOWN/DRAIN by an earlier failure: bring it back.
        if timeout 5 sinfo -h -N -n "$node" -o '%T' 2>/dev/null | grep -qE 'down|drain'; then
            timeout 5 scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.2
    done
}

# slurmd_died_on_cgroups: some slurmd is not running and its log's last lines speak of cgroups.
slurmd_died_on_cgroups() {
    local node
    for node in "$NODE_NAME" "${MULTI_NODES[@]}"; do
        if ! pid_alive "/run/slurmd-$node.pid" slurmd && tail -n 20 "$SLURM_LOG_DIR/slurmd-$node.log" 2>/dev/null | grep -qi cgroup; then
            return 0
        fi
    done
    return 1
}

stop_slurmds() {
    local node
    stop_pidfile slurmd "$LEGACY_SLURMD_PID" slurmd
    for node in "$NODE_NAME" "${MULTI_NODES[@]}"; do stop_pidfile "slurmd $node" "/run/slurmd-$node.pid" slurmd; done
}

start_slurm_daemons() {
    # slurm.conf/cgroup.conf changed: slurmctld and slurmd must both restart.
    if ((SLURM_CONF_CHANGED)); then
        stop_slurmds
        stop_pidfile slurmctld "$SLURMCTLD_PID" slurmctld
    fi
    start_slurmctld
    if start_slurmd; then
        [[ $CGROUP_WANTED == auto && $(cgroup_mode) == cgroup ]] && echo cgroup >"$CGROUP_MODE_FILE"
        return 0
    fi
    # Fall back only when a slurmd died on its cgroup plugins: a node that registers but is unusable (INVAL for
    # a gres.conf it disagrees with, say) is no reason to give up cgroups, and the mode is remembered.
    if [[ $CGROUP_WANTED == auto && $(cgroup_mode) == cgroup ]] && slurmd_died_on_cgroups; then
        log "slurmd did not come up with cgroup plugins; last lines of $SLURMD_LOG:"
        tail -n 10 "$SLURMD_LOG" >&2 || true
        log "falling back to proctrack/linuxproc + task/none + OverMemoryKill"
        echo fallback >"$CGROUP_MODE_FILE"
        write_slurm_conf fallback
        stop_slurmds
        stop_pidfile slurmctld "$SLURMCTLD_PID" slurmctld
        start_slurmctld
        start_slurmd && return 0
    fi
    log "a slurmd did not come up within ${WAIT_TIMEOUT}s; last lines of their logs:"
    tail -n 25 "$SLURM_LOG_DIR"/slurmd-*.log >&2 || true
    exit 1
}

start_sshd() {
    ((SSHD_CONF_CHANGED)) && stop_pidfile sshd "$SSHD_PID" sshd
    if ! pid_alive "$SSHD_PID" sshd; then
        log "starting sshd on $SSH_HOST:$SSH_PORT"
        rm -f "$SSHD_PID"
        /usr/sbin/sshd -t -f "$SSHD_CONFIG" 2>>"$SSHD_LOG" || { tail -n 5 "$SSHD_LOG" >&2; die "sshd config test failed"; }
        launch sshd "$SSHD_LOG.out" /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$SSHD_LOG"
    fi
    wait_for sshd "$SSHD_LOG" "$SSHD_PID" sshd probe_sshd
}

start_otp_sshd() {
    ((OTP_SSHD_CONF_CHANGED)) && stop_pidfile "sshd (OTP)" "$OTP_SSHD_PID" sshd
    if ! pid_alive "$OTP_SSHD_PID" sshd; then
        log "starting sshd (key + one-time code) on $SSH_HOST:$OTP_PORT"
        rm -f "$OTP_SSHD_PID"
        /usr/sbin/sshd -t -f "$OTP_SSHD_CONFIG" 2>>"$OTP_SSHD_LOG" || { tail -n 5 "$OTP_SSHD_LOG" >&2; die "OTP sshd config test failed"; }
        launch "sshd (OTP)" "$OTP_SSHD_LOG.out" /usr/sbin/sshd -f "$OTP_SSHD_CONFIG" -E "$OTP_SSHD_LOG"
        wait_for "sshd (OTP)" "$OTP_SSHD_LOG" "$OTP_SSHD_PID" sshd probe_otp_sshd
        # Once per (re)start: prove a full key + code login works.
        probe_otp_login || { tail -n 15 "$OTP_SSHD_LOG" >&2; die "login with key + one-time code through $SSH_HOST:$OTP_PORT failed"; }
    fi
    wait_for "sshd (OTP)" "$OTP_SSHD_LOG" "$OTP_SSHD_PID" sshd probe_otp_sshd
}

print_summary() {
    log "cluster '$CLUSTER_NAME' is up (node $NODE_NAME: partitions debug* and batch; nodes ${MULTI_NODES[*]}: partition $MULTI_PARTITION; $(cgroup_mode) mode)"
    cat >&2 <<EOF
  ssh:          ssh -i $USER_KEY -o UserKnownHostsFile=$KNOWN_HOSTS -p $SSH_PORT $TEST_USER@$SSH_HOST
  host/port:    $SSH_HOST:$SSH_PORT   user: $TEST_USER
  key:          $USER_KEY
  password:     stored in $PASSWORD_FILE (also TESTCLUSTER_PASSWORD in the env file)
  known_hosts:  $KNOWN_HOSTS
  env file:     $ENV_FILE   (or: eval "\$($0 env)")
  OTP sshd:     $SSH_HOST:$OTP_PORT (key + TOTP code; code: $OTP_CODE_CMD or oathtool --totp \$(cat $OTP_SECRET_FILE))
  logs:         $SLURM_LOG_DIR/, $MUNGE_LOG, $MYSQL_LOG, $SSHD_LOG, $OTP_SSHD_LOG
EOF
}

# ----------------------------------------------------------------------------- commands
cmd_install() {
    take_lock
    install_packages
    configure
    log "installed and configured (state in $TESTCLUSTER_DIR)"
    if ((SLURM_CONF_CHANGED + SLURMDBD_CONF_CHANGED + SSHD_CONF_CHANGED + OTP_SSHD_CONF_CHANGED)) && pid_alive "$SLURMCTLD_PID" slurmctld; then
        log "configuration changed while the cluster runs: run '$0 restart'"
    fi
}

cmd_start() {
    take_lock
    local t0=$SECONDS
    # Fast path: everything already answers and no config changed.
    if ! packages_missing; then
        configure
        if ((SLURM_CONF_CHANGED + SLURMDBD_CONF_CHANGED + SSHD_CONF_CHANGED + OTP_SSHD_CONF_CHANGED == 0)) && all_answer; then
            log "already running"
            print_summary
            return 0
        fi
    else
        install_packages
        configure
    fi
    start_munged
    start_mariadbd
    start_slurmdbd
    register_accounting
    start_slurm_daemons
    start_sshd
    start_otp_sshd
    write_env_file
    log "started in $((SECONDS - t0))s"
    print_summary
}

cmd_stop() {
    take_lock
    # Cancel all jobs first so no slurmstepd is left behind.
    if pid_alive "$SLURMCTLD_PID" slurmctld; then
        if [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null) ]]; then
            log "cancelling all jobs"
            timeout 10 scancel --full $(timeout 10 squeue -h -o %i) >/dev/null 2>&1 || true
            local i
            for ((i = 0; i < 50; i++)); do
                [[ -z $(timeout 5 squeue -h -t running,completing,pending -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_pidfile "sshd (OTP)" "$OTP_SSHD_PID" sshd
    stop_pidfile sshd "$SSHD_PID" sshd
    stop_slurmds
    stop_pidfile slurmctld "$SLURMCTLD_PID" slurmctld
    stop_pidfile slurmdbd "$SLURMDBD_PID" slurmdbd
    stop_pidfile mariadbd "$MYSQL_PID" mariadbd
    stop_pidfile munged "$MUNGE_PID" munged
    log "stopped"
}

# all_answer [-v]: probe every daemon; with -v report each result on stderr.
all_answer() {
    local verbose=${1:-} ok=0 name
    for name in munge slurmdbd slurmctld slurmd sshd otp_sshd; do
        if "probe_$name"; then
            [[ -n $verbose ]] && log "$name: ok"
        else
            [[ -n $verbose ]] && log "$name: NOT answering"
            ok=1
        fi
    done
    return $ok
}

cmd_status() {
    [[ -s $USER_KEY ]] || { log "not set up (no $USER_KEY)"; return 1; }
    if all_answer -v; then log "all daemons answer"; return 0; fi
    return 1
}

cmd_env() { env_lines; }

main() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    case "${1:-}" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) cmd_env ;;
        packages) printf '%s\n' "${PACKAGES[@]}" ;;
        restart) cmd_stop; cmd_start ;;   # one lock for both halves
        *) echo "usage: $0 install|start|stop|status|env|packages|restart" >&2; exit 2 ;;
    esac
}

main "$@"
