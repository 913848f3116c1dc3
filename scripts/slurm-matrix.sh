#!/usr/bin/env bash
# slurm-matrix.sh - the integration tests against every Slurm release our users run, each for real.
#
# Usage: scripts/slurm-matrix.sh [22.05|24.11|26.05|all] [-- PYTEST ARGS]   (default: all)
#        scripts/slurm-matrix.sh build [RELEASE|all]      only build/refresh the cached chroots
#        scripts/slurm-matrix.sh run RELEASE -- CMD...    CMD (as root, in the project) beside RELEASE's cluster
#
# For each release asked for:
#   1. a Debian chroot of the release that carries it (bookworm 22.05, trixie 24.11, forky 26.05), made
#      with debootstrap from the host's Debian mirror and cached in $SLURM_MATRIX_CACHE (packages of the
#      test cluster, python3, uv; rebuilt only when the package list changes);
#   2. the project's locked venv made in it with the chroot's own Python (on the host's network, the only
#      moment PyPI is needed);
#   3. in new network, PID, mount, UTS and IPC namespaces (loopback only: it never clashes with a cluster
#      on the host's ports, nor sees the host's processes), scripts/testcluster.sh start, then
#      pytest tests/integration against it;
# then a table: release, passed, failed, minutes. Exit 0 only when every release asked for is green.
#
# Environment:
#   SLURM_MATRIX_CACHE   where the chroots live (default /var/cache/dagster-slurm-matrix)
#   SLURM_MATRIX_MIRROR  Debian mirror (default: the first deb.debian.org-style URI of the host's apt sources)
#   SLURM_MATRIX_LOGS    where each release's log goes (default /tmp/dagster-slurm-matrix)
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$(pwd)
CACHE=${SLURM_MATRIX_CACHE:-/var/cache/dagster-slurm-matrix}
LOGS=${SLURM_MATRIX_LOGS:-/tmp/dagster-slurm-matrix}
ALL_RELEASES=(22.05 24.11 26.05)
# What the chroot holds besides the test cluster's own packages (scripts/testcluster.sh packages).
# zstd: the pixi-unpack stand-in of the tests unpacks .conda packages with it where python3 < 3.14 (as on the host).
EXTRA_PACKAGES=(python3 python3-venv ca-certificates iproute2 procps psmisc util-linux git zstd)

log() { printf 'slurm-matrix: %s\n' "$*" >&2; }
die() { printf 'slurm-matrix: ERROR: %s\n' "$*" >&2; exit 1; }

codename_of() {
    case $1 in
        22.05) echo bookworm ;;
        24.11) echo trixie ;;
        26.05) echo forky ;;
        *) die "unknown release '$1': use one of ${ALL_RELEASES[*]} or all" ;;
    esac
}

mirror() {
    if [[ -n ${SLURM_MATRIX_MIRROR:-} ]]; then echo "$SLURM_MATRIX_MIRROR"; return; fi
    local uri
    uri=$(grep -hoE '(URIs:|deb)\s+https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
        grep -oE 'https?://[^ ]*' | head -n 1)
    echo "${uri:-http://deb.debian.org/debian}"
}

# debootstrap's script for a suite: Debian 12's debootstrap has none for forky (sid's is the same).
bootstrap_script() {
    local s=/usr/share/debootstrap/scripts/$1
    [[ -e $s ]] && echo "$s" || echo /usr/share/debootstrap/scripts/sid
}

# apt inside a chroot. Testing's Release file may be past its Valid-Until date on a mirror snapshot.
chroot_apt() {
    local root=$1; shift
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Check-Valid-Until=false "$@"
}

# Mounts a chroot needs for apt and for uv on the host's network; undone by umount_build.
mount_build() {
    local root=$1
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mountpoint -q "$root/sys" || mount -t sysfs sysfs "$root/sys"
    mountpoint -q "$root/dev" || mount --rbind /dev "$root/dev"
    mkdir -p "$root/work/project"
    mountpoint -q "$root/work/project" || mount --bind "$PROJECT" "$root/work/project"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # The host's CA bundle (it may hold a site's proxy CA that the chroot's own bundle lacks), for uv.
    cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root/etc/ssl/host-ca.crt" 2>/dev/null || true
}
umount_build() {
    local root=$1 m
    for m in work/project dev sys proc; do
        mountpoint -q "$root/$m" && umount -R -l "$root/$m" 2>/dev/null || true
    done
}

# The real uv binary (not a pyenv shim, which would not run in a chroot).
uv_binary() {
    local bin
    bin=$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null) || bin=$(command -v uv)
    echo "$bin"
}

# build RELEASE: the cached chroot of RELEASE, made or refreshed.
build() {
    local release=$1 codename root want stamp
    codename=$(codename_of "$release")
    root=$CACHE/$codename
    want=$( (scripts/testcluster.sh packages; printf '%s\n' "${EXTRA_PACKAGES[@]}") | sort -u | tr '\n' ' ')
    stamp=$root/.dagster-slurm-matrix
    mkdir -p "$CACHE" "$LOGS"
    local blog=$LOGS/build-$release.log
    if [[ ! -x $root/usr/bin/apt-get || ! -e $root/.debootstrap-done ]]; then
        command -v debootstrap >/dev/null || apt-get install -y -q --no-install-recommends debootstrap >>"$blog" 2>&1 ||
            die "debootstrap missing and apt-get install debootstrap failed (log: $blog)"
        log "$release: debootstrap $codename into $root (a few minutes; log: $blog)"
        rm -rf "$root"
        debootstrap --variant=minbase "$codename" "$root" "$(mirror)" "$(bootstrap_script "$codename")" >>"$blog" 2>&1 ||
            { tail -n 5 "$blog" >&2; die "$release: debootstrap failed (log: $blog)"; }
        touch "$root/.debootstrap-done"
    fi
    if [[ $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
        log "$release: installing packages into the chroot (log: $blog)"
        printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 0755 "$root/usr/sbin/policy-rc.d"
        mount_build "$root"
        trap 'umount_build "'"$root"'"' EXIT
        # shellcheck disable=SC2086
        if ! { chroot_apt "$root" update && chroot_apt "$root" install -y --no-install-recommends $want; } >>"$blog" 2>&1; then
            tail -n 10 "$blog" >&2; die "$release: apt-get in the chroot failed (log: $blog)"
        fi
        umount_build "$root"; trap - EXIT
        echo "$want" >"$stamp"
    fi
    # uv: the host's binary (the bootstrap installed it), same version in every chroot.
    install -m 0755 "$(uv_binary)" "$root/usr/local/bin/uv"
    log "$release: chroot ready ($root, $(chroot "$root" slurmd -V 2>/dev/null))"
}

# venv RELEASE: the project's locked venv inside the chroot, from the chroot's python3, on the host's network.
venv() {
    local release=$1 root
    root=$CACHE/$(codename_of "$release")
    mount_build "$root"
    trap 'umount_build "'"$root"'"' EXIT
    chroot "$root" env HOME=/root UV_PROJECT_ENVIRONMENT=/opt/dagster-slurm-venv UV_PYTHON=/usr/bin/python3 \
        SSL_CERT_FILE=/etc/ssl/host-ca.crt UV_LINK_MODE=copy bash -c 'cd /work/project && uv sync --frozen --quiet' >>"$LOGS/build-$release.log" 2>&1 ||
        { tail -n 10 "$LOGS/build-$release.log" >&2; die "$release: uv sync in the chroot failed (log: $LOGS/build-$release.log)"; }
    umount_build "$root"; trap - EXIT
}

# The host's cgroup mounts as "TYPE DIR OPTIONS" lines (DIR below /sys/fs/cgroup, "." for its root), the
# mount options reduced to what names the hierarchy (controllers, name=...).
host_cgroup_mounts() {
    awk '$3 == "cgroup" || $3 == "cgroup2" {
            if ($2 != "/sys/fs/cgroup" && index($2, "/sys/fs/cgroup/") != 1) next
            dir = ($2 == "/sys/fs/cgroup") ? "." : substr($2, 16)
            n = split($4, o, ","); keep = ""
            for (i = 1; i <= n; i++) if (o[i] !~ /^(rw|ro|nosuid|nodev|noexec|relatime|noatime|nsdelegate|memory_recursiveprot)$/) keep = keep (keep == "" ? "" : ",") o[i]
            print $3, dir, (keep == "" ? "none" : keep)
        }' /proc/mounts
}

# cgroup_enter NAME: move this shell into a cgroup NAME of its own in every hierarchy, so that a cgroup
# namespace made next is rooted there: the release's Slurm makes its cgroups inside it, apart from the host's.
cgroup_enter() {
    local name=$1 type dir opts base
    while read -r type dir opts; do
        base=/sys/fs/cgroup/$dir/$name
        mkdir -p "$base" 2>/dev/null || continue
        if [[ -e $base/cpuset.cpus && -z $(cat "$base/cpuset.cpus") ]]; then
            cat "$base/../cpuset.cpus" >"$base/cpuset.cpus"; cat "$base/../cpuset.mems" >"$base/cpuset.mems"
        fi
        echo "$BASHPID" >"$base/cgroup.procs" 2>/dev/null || true
    done < <(host_cgroup_mounts)
}

# inner ROOT HOSTNAME -- CMD: runs as PID 1 of fresh namespaces (see run_release). Loopback only, a
# hostname of its own, fresh /proc, /run and /tmp; the project bound at /work/project.
inner() {
    local root=$1 host=$2; shift 3
    mount --make-rprivate /
    ip link set lo up
    hostname "$host"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    # The host's cgroup hierarchies, as seen from our cgroup namespace (rooted at our own cgroup).
    local type dir opts
    if [[ -n $(host_cgroup_mounts) ]] && ! grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts; then
        mount -t tmpfs -o mode=0755 tmpfs "$root/sys/fs/cgroup"
    fi
    while read -r type dir opts; do
        mkdir -p "$root/sys/fs/cgroup/$dir"
        if [[ $type == cgroup2 ]]; then mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup/$dir"
        else mount -t cgroup -o "$opts" cgroup "$root/sys/fs/cgroup/$dir"; fi
    done < <(host_cgroup_mounts)
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$root/run"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mkdir -p "$root/work/project"
    mount --bind "$PROJECT" "$root/work/project"
    if [[ -d /opt/wheels ]]; then  # wheels this machine keeps (a CPU torch), as the host's tests see them
        mkdir -p "$root/opt/wheels"; mount --bind /opt/wheels "$root/opt/wheels"; mount -o remount,bind,ro "$root/opt/wheels"
    fi
    printf '127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost\n' "$host" >"$root/etc/hosts"
    echo "$host" >"$root/etc/hostname"
    # PID 1 reaps every orphan (bash's SIGCHLD handler waits for any child) while the payload runs.
    chroot "$root" "$@" &
    wait $!
}

# run_release RELEASE PYTEST-ARGS...: the integration tests in RELEASE's chroot; prints "passed failed".
# With RUN_COMMAND=1, the arguments are a command run (in /work/project, as root) instead of pytest.
run_release() {
    local release=$1; shift
    local codename root rlog rc=0
    codename=$(codename_of "$release")
    root=$CACHE/$codename
    rlog=$LOGS/test-$release.log
    [[ ${RUN_COMMAND:-0} == 1 ]] && rlog=$LOGS/run-$release.log
    # one cluster per chroot at a time (its database, spool and keys live in it)
    exec 8>"$root/.matrix-lock"
    flock -w 3600 8 || die "$release: another matrix run holds $root"
    rm -f "$root/var/lib/dagster-slurm-testcluster/cgroup_mode"  # decided anew from what this host offers
    # PyPI through a CONNECT proxy on a unix socket (scripts/pypi_proxy.py): the one way out of the namespace.
    local sock_dir=$root/var/lib/dagster-slurm-matrix proxy_pid
    mkdir -p "$sock_dir"; chmod 0700 "$sock_dir"
    python3 scripts/pypi_proxy.py serve "$sock_dir/pypi.sock" 2>>"$LOGS/proxy-$release.log" &
    proxy_pid=$!
    printf '[global]\nproxy = http://127.0.0.1:3128\ncert = /etc/ssl/host-ca.crt\n' >"$root/etc/pip.conf"
    cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root/etc/ssl/host-ca.crt"
    local inner_cmd
    inner_cmd='set -e; cd /work/project
        python3 scripts/pypi_proxy.py forward 3128 /var/lib/dagster-slurm-matrix/pypi.sock &
        scripts/testcluster.sh start
        if [ "${RUN_COMMAND:-0}" = 1 ]; then exec "$@"; fi
        /opt/dagster-slurm-venv/bin/python -m pytest -q -p no:cacheprovider "$@"'
    (
        cgroup_enter "dagster-slurm-matrix-$codename"
        exec unshare --net --pid --mount --uts --ipc --cgroup --fork --kill-child \
            "$PROJECT/scripts/slurm-matrix.sh" __inner "$root" "slurm-$codename" -- \
            env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
                CI=true UV_PROJECT_ENVIRONMENT=/opt/dagster-slurm-venv RUN_COMMAND="${RUN_COMMAND:-0}" \
                HTTPS_PROXY=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128 NO_PROXY=127.0.0.1,localhost \
                SSL_CERT_FILE=/etc/ssl/host-ca.crt PIP_CERT=/etc/ssl/host-ca.crt \
                /bin/bash -c "$inner_cmd" pytest "$@"
    ) >"$rlog" 2>&1 || rc=$?
    kill "$proxy_pid" 2>/dev/null || true
    if [[ ${RUN_COMMAND:-0} == 1 ]]; then cat "$rlog"; return "${rc:-0}"; fi
    # pytest's last line: "N failed, M passed, K errors in ..." (any order).
    local summary passed failed errors
    summary=$(grep -E '(passed|failed|error)' "$rlog" | grep -E ' in [0-9.]+s' | tail -n 1)
    passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    errors=$(grep -oE '[0-9]+ error' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
    if [[ -z $summary ]]; then failed=1; log "$release: no pytest summary; last lines of $rlog:"; tail -n 15 "$rlog" >&2; fi
    echo "${passed:-0} $(( ${failed:-0} + ${errors:-0} ))"
}

main() {
    [[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, namespaces)"
    if [[ ${1:-} == __inner ]]; then shift; inner "$@"; return; fi
    local do_build_only=0
    if [[ ${1:-} == build ]]; then do_build_only=1; shift; fi
    if [[ ${1:-} == run ]]; then  # run RELEASE -- CMD...: CMD beside the release's running test cluster
        local release=${2:?usage: $0 run RELEASE -- CMD...}; shift 2; [[ ${1:-} == -- ]] && shift
        build "$release"; venv "$release"
        RUN_COMMAND=1 run_release "$release" "$@"
        return
    fi
    local want=${1:-all}; [[ $# -gt 0 ]] && shift
    [[ ${1:-} == -- ]] && shift
    local releases=()
    if [[ $want == all ]]; then releases=("${ALL_RELEASES[@]}"); else codename_of "$want" >/dev/null; releases=("$want"); fi
    local user_args=("$@")
    command -v uv >/dev/null || . scripts/bootstrap.sh
    local r rows=() notes=() green=1 t0 res
    for r in "${releases[@]}"; do build "$r"; done
    ((do_build_only)) && return 0
    for r in "${releases[@]}"; do
        t0=$SECONDS
        venv "$r"
        local pytest_args=("${user_args[@]}")
        if [[ ${#pytest_args[@]} -eq 0 ]]; then
            pytest_args=(tests/integration)
            # torchrun needs a CPU torch for the cluster's Python: this machine keeps one for 3.11 only, and PyPI's
            # torch is a CUDA build of several GB. Said here and in the table, never skipped silently.
            local py; py=$(chroot "$CACHE/$(codename_of "$r")" python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
            if ! ls /opt/wheels/torch-*+cpu-"$py"-* >/dev/null 2>&1; then
                log "$r: no CPU torch wheel for $py on this machine: deselecting the torchrun test"
                pytest_args+=(--deselect tests/integration/test_multinode.py::test_torchrun_all_reduce_over_two_nodes
                              --deselect tests/integration/test_multinode.py::test_torchrun_all_reduce_in_a_shared_allocation)
                notes+=("$r: torchrun tests deselected (no CPU torch wheel for $py here)")
            fi
        fi
        log "$r: running ${pytest_args[*]} (log: $LOGS/test-$r.log)"
        res=$(run_release "$r" "${pytest_args[@]}")
        local p=${res% *} f=${res#* }
        ((f == 0 && p > 0)) || green=0
        rows+=("$(printf '%-8s %-7s %-7s %s' "$r" "$p" "$f" "$(awk -v s=$((SECONDS - t0)) 'BEGIN {printf "%.1f", s / 60}')")")
    done
    printf '%-8s %-7s %-7s %s\n' release passed failed minutes
    printf '%s\n' "${rows[@]}"
    [[ ${#notes[@]} -eq 0 ]] || printf 'note: %s\n' "${notes[@]}"
    ((green))
}

main "$@"
