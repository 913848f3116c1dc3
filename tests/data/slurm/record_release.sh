#!/usr/bin/env bash
# record_release.sh OUTDIR - record what one Slurm release prints for the commands dagster-slurm runs.
#
# Run as the cluster user on a login node of a test cluster (scripts/testcluster.sh: partitions debug
# (default), short (MaxTime=1), multinode (n1..n3, one CPU each); GPUs as a GRES). Writes OUTDIR/<X.Y>/
# (X.Y from `sbatch -V`), one file per recording, read by tests/unit/test_release_outputs.py:
#   NAME.txt   stdout of a command, after a header of lines starting with "# " (the first:
#              "# <command>  (slurm X.Y.Z, recorded <date>)", then what the jobs were)
#   NAME.json  {"recorded_from", "recorded_at", "cluster_time" (the cluster's clock just before),
#              "command", "note", "stdout", "stderr", "exit_status"} where stderr or the exit status matters
# The sacct fields and the squeue format are the library's own (read from src/dagster_slurm/slurm/parse.py),
# the ledger's and gc's commands rendered as dagster_slurm.slurm.ledger/parse render them.
# Every job is named rec-*, bounded by --time and cancelled on exit; a run takes ~3 minutes (the
# TIMEOUT job needs Slurm's 1-minute minimum plus the controller's time-limit sweep).
#
#   scripts/slurm-matrix.sh run 24.11 -- bash -c 'runuser -u slurmuser -- bash \
#       /work/project/tests/data/slurm/record_release.sh /work/project/tests/data/slurm/releases'
#   su - slurmuser -c 'bash /path/to/tests/data/slurm/record_release.sh /path/to/tests/data/slurm/releases'
set -uo pipefail
umask 022
OUT_ROOT=$(realpath "${1:?usage: record_release.sh OUTDIR}")
PROJECT=$(cd "$(dirname "$0")/../../.." && pwd)

FROM=$(sbatch -V)                      # "slurm 24.11.5", "slurm-wlm 22.05.8"
FULL=$(awk '{print $2}' <<<"$FROM")    # 24.11.5
RELEASE=$(cut -d. -f1,2 <<<"$FULL")    # 24.11
OUT=$OUT_ROOT/$RELEASE
mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rec-release.XXXXXX") || exit 1
chmod 0755 "$WORK"
cd "$WORK" || exit 1
log() { printf 'record_release %s: %s\n' "$RELEASE" "$*" >&2; }

# The library's constants, as parse.py defines them (SACCT_FIELDS/SQUEUE_FORMAT in the environment win).
constant() {
    python3 - "$PROJECT/src/dagster_slurm/slurm/parse.py" "$1" <<'PY'
import ast, sys
path, want = sys.argv[1:]
ns = {}
for node in ast.parse(open(path).read()).body:
    if isinstance(node, ast.Assign) and {getattr(t, "id", None) for t in node.targets} & {"GPU_FIELDS", want}:
        exec(compile(ast.Module([node], []), path, "exec"), ns)
print(ns[want])
PY
}
SACCT_FIELDS=${SACCT_FIELDS:-$(constant SACCT_FIELDS)}
SQUEUE_FORMAT=${SQUEUE_FORMAT:-$(constant SQUEUE_FORMAT)}
[[ -n $SACCT_FIELDS && -n $SQUEUE_FORMAT ]] || { log "cannot read SACCT_FIELDS/SQUEUE_FORMAT"; exit 1; }

JOBS=()
cleanup() {
    ((${#JOBS[@]})) && scancel "${JOBS[@]}" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# txt NAME NOTE COMMAND: stdout of COMMAND (run by bash in $WORK) after the header.
txt() {
    local name=$1 note=$2 cmd=$3 rc
    bash -c "$cmd" >"$WORK/.out" 2>"$WORK/.err"; rc=$?
    {
        printf '# %s  (slurm %s, recorded %s)\n' "$cmd" "$FULL" "$(date -Iseconds)"
        [[ -z $note ]] || printf '# %s\n' "$note"
        printf "# lines starting with '# ' are this header; the rest is raw stdout\n"
        cat "$WORK/.out"
    } >"$OUT/$name.txt"
    if [[ $rc != 0 || -s $WORK/.err ]]; then log "$name: exit $rc: $(head -c 300 "$WORK/.err")"; fi
}

# json NAME NOTE COMMAND: stdout, stderr and exit status of COMMAND.
json() {
    local name=$1 note=$2 cmd=$3 rc now
    now=$(date +%Y-%m-%dT%H:%M:%S)
    bash -c "$cmd" >"$WORK/.out" 2>"$WORK/.err"; rc=$?
    json_write "$name" "$note" "$cmd" "$now" "$WORK/.out" "$WORK/.err" "$rc"
}
json_write() {  # NAME NOTE COMMAND CLUSTER-TIME STDOUT-FILE STDERR-FILE EXIT-STATUS
    python3 - "$OUT/$1.json" "$FROM" "$(date -Iseconds)" "$4" "$3" "$2" "$5" "$6" "$7" <<'PY'
import json, sys
path, frm, at, now, cmd, note, out, err, rc = sys.argv[1:]
rec = {"recorded_from": frm, "recorded_at": at, "cluster_time": now, "command": cmd}
if note:
    rec["note"] = note
rec.update(stdout=open(out).read(), stderr=open(err).read(), exit_status=int(rc))
with open(path, "w") as fh:
    json.dump(rec, fh, indent=2)
    fh.write("\n")
PY
}

# submit VAR NAME SBATCH-ARGS...: sbatch --parsable -J rec-NAME; the job id in VAR. A refusal is recorded
# (sbatch_refused_NAME.json) and leaves VAR empty.
submit() {
    local var=$1 name=$2 id cmd rc now; shift 2
    cmd="sbatch --parsable -J rec-$name -o $WORK/$name.out$(printf ' %q' "$@")"
    now=$(date +%Y-%m-%dT%H:%M:%S)
    sbatch --parsable -J "rec-$name" -o "$WORK/$name.out" "$@" >"$WORK/.sbatch.out" 2>"$WORK/.sbatch.err"; rc=$?
    id=$(head -n 1 "$WORK/.sbatch.out"); id=${id%%;*}
    if [[ $rc != 0 || -z $id ]]; then
        log "sbatch rec-$name refused: $(cat "$WORK/.sbatch.err")"
        json_write "sbatch_refused_$name" "" "$cmd" "$now" "$WORK/.sbatch.out" "$WORK/.sbatch.err" "$rc"
        id=
    fi
    [[ -z $id ]] || JOBS+=("$id")
    printf -v "$var" '%s' "$id"
}
# ids ID...: the non-empty ones, comma-separated
ids() { local out= i; for i in "$@"; do [[ -z $i ]] || out+=${out:+,}$i; done; echo "$out"; }

# wait_for ID SECONDS STATE...: until squeue shows one of the states (an array: any of its tasks).
wait_for() {
    local id=$1 until=$((SECONDS + $2)) s want; shift 2
    [[ -n $id ]] || return 1
    while ((SECONDS < until)); do
        s=" $(squeue -h -t all -j "$id" -o %T 2>/dev/null | tr '\n' ' ') "
        for want in "$@"; do [[ $s == *" $want "* ]] && return 0; done
        sleep 1
    done
    log "job $id: not $* after the wait (squeue: $s)"
    return 1
}
TERMINAL='^(COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE)'
# settled IDS: until sacct has every row terminal and the job rows complete (Partition, ReqMem and
# TimelimitRaw are filled ~1.5 s after the end; a multi-node job's row lists all its nodes seconds later).
# Bounded: 30 s.
settled() {
    local until=$((SECONDS + 30)) ok
    while ((SECONDS < until)); do
        ok=$(sacct -P -n -o JobID,State,Partition,ReqMem,TimelimitRaw,NNodes,NodeList -j "$1" 2>/dev/null | awk -F'|' -v t="$TERMINAL" '
            { split($1, id, "."); n++ }
            $2 !~ t { bad++ }
            id[2] == "" && ($3 == "" || $4 ~ /\?/ || $5 == "") { bad++ }
            id[2] == "" && $6 > 1 && $7 !~ /[\[,]/ && $7 !~ /^None/ { bad++ }
            END { print (n > 0 && bad == 0) ? "yes" : "no" }')
        [[ $ok == yes ]] && { sleep 1; return 0; }
        sleep 1
    done
    log "sacct not settled for $1"
}
# wait_estimate ID SECONDS: until squeue gives the pending job a start estimate (a backfill pass).
wait_estimate() {
    local until=$((SECONDS + $2))
    while ((SECONDS < until)); do
        [[ $(squeue -h -j "$1" -o %S 2>/dev/null) == 20* ]] && return 0
        sleep 1
    done
    log "job $1: no start estimate after $2 s"
}

# The library's commands, as dagster_slurm.slurm.ledger (state_command, lookup_command) and parse
# (active_jobs_script, its lines joined by "; ") render them.
tool() { printf '{ %s; echo "rc=$?"; } 2>&1' "$1"; }
state_command() { printf '%s; echo @@; %s' "$(tool "squeue -h -t all -o '%i|%T' -j $1")" "$(tool "sacct -X -P -n -o JobID,State -j $1")"; }
lookup_command() {  # JOB-NAME RUN-DIR
    printf '%s; echo @@; %s; echo @@; date +%%s; g=$(cat %s/sbatch.*/at 2>/dev/null | sort -n | tail -n 1); echo "${g:--}"' \
        "$(tool "squeue -h -t all -u \"\$(id -un)\" -n $1 -o '%i|%Z'")" \
        "$(tool "sacct -X -P -n -S now-7days -u \"\$(id -un)\" --name $1 -o JobID,WorkDir")" "$2"
}
active_command() {  # IDS
    printf '%s; %s; %s' "ids=$1" \
        'if [ -n "$ids" ]; then out=$(squeue -h -o %i -j "$ids" 2>&1); rc=$?; else out=; rc=0; fi' \
        "printf 'ACTIVE|%s|%s\\n' \"\$rc\" \"\$(printf '%s' \"\$out\" | tr '\\n' ,)\""
}
SQ="squeue -h -t all -o '$SQUEUE_FORMAT' -j"
SA="sacct -P -n -o $SACCT_FIELDS -j"
UNKNOWN=999999

log "recording $FROM into $OUT (jobs in $WORK)"
NODE=$(sinfo -h -p debug -o %N | head -n 1)
NCPUS=$(sinfo -h -p debug -o %c | head -n 1)

# --- the cluster -----------------------------------------------------------------------------------
txt version "" "sbatch -V"
txt scontrol_show_config "" "scontrol show config"
txt sbatch_help "" "sbatch --help"
txt squeue_help "the watcher asks squeue --only-job-state where this lists it (>= 24.05)" "squeue --help"
STATES_ONLY=
squeue --help 2>/dev/null | grep -q -- --only-job-state && STATES_ONLY="squeue --only-job-state -h -t all -o '%i|%T' -j"
# states NAME NOTE IDS: the watcher's states-only query, where squeue has it
states() { [[ -z $STATES_ONLY ]] || txt "$1" "$2" "$STATES_ONLY $3"; }
txt sinfo "" "sinfo"
txt sinfo_debug_nodes "the debug partition's node (the cluster's own node name) and its CPUs" "sinfo -h -p debug -o '%N|%c'"
txt sinfo_node_state "the test cluster's readiness probe (scripts/testcluster.sh)" "sinfo -h -N -n $NODE -o '%T'"
txt scontrol_show_hostnames "the launchers' node list of a job" "scontrol show hostnames 'n[1-3]'"
txt scontrol_show_node "the launchers read NodeAddr from it" "scontrol show node n1"

# --- sbatch refusals, and --test-only on an idle cluster ------------------------------------------
json sbatch_invalid_partition "" "sbatch --parsable -p nosuchpartition -o /dev/null --wrap true"
json sbatch_invalid_time "" "sbatch --parsable --time=notatime -o /dev/null --wrap true"
json sbatch_nodelist_outside_partition "n1 is not in partition debug" "sbatch --parsable -p debug --nodelist=n1 --time=1 -o /dev/null --wrap true"
json sbatch_mem_too_large "more memory than any node has" "sbatch --parsable -p debug --mem=99999999 --time=1 -o /dev/null --wrap true"
json sbatch_bad_constraint "a feature no node has" "sbatch --parsable -p debug --constraint=nosuchfeature --time=1 -o /dev/null --wrap true"
json sbatch_test_only_idle "before any rec- job: the debug partition idle" "sbatch --test-only -p debug --time=1 -o /dev/null --wrap true"
json sbatch_test_only_multinode_idle "three nodes, all idle" "sbatch --test-only -p multinode -N 3 --time=1 -o /dev/null --wrap true"

# --- jobs ------------------------------------------------------------------------------------------
# TIMEOUT first: it takes longest (the 1-minute limit, then the controller's sweep)
submit TIMEOUT timeout -p short --time=1 --wrap 'sleep 300'
# a blocker of n1, so that a 3-node job waits (Resources, with a start estimate) and --test-only answers
# "later"; cancelled while running
submit BLOCKER blocker -p multinode -w n1 --time=2 --wrap 'sleep 300'
mkdir -p "$WORK/completed"
cat >"$WORK/completed.sh" <<'EOF'
#!/bin/bash
#SBATCH --mem=100M
#SBATCH --time=2
python3 -c '
import time
x = [str(i) * 4 for i in range(400000)]  # ~40 MB
t = time.time()
while time.time() - t < 4:
    pass
'
EOF
cat >"$WORK/oom.sh" <<'EOF'
#!/bin/bash
#SBATCH --mem=50M
#SBATCH --time=1
python3 -c 'import time; x = b"x" * (200 * 2**20); time.sleep(6)'
EOF
json sbatch_parsable "rec-completed: completed.sh (--mem=100M --time=2) keeps python3 busy 4 s with a ~40 MB list" \
    "sbatch --parsable -J rec-completed -D $WORK/completed -o $WORK/completed.out $WORK/completed.sh"
COMPLETED=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["stdout"].strip().split(";")[0])' "$OUT/sbatch_parsable.json")
[[ -n $COMPLETED ]] && JOBS+=("$COMPLETED")
submit FAILED failed -p debug --time=1 --wrap 'sleep 3; exit 3'
submit GPU gpu -p debug --gres=gpu:1 --time=1 --wrap 'sleep 3'

wait_for "$BLOCKER" 60 RUNNING
wait_for "$COMPLETED" 60 RUNNING
submit MULTI multinode -p multinode -N 3 --time=1 --wrap 'srun sleep 6'
json sbatch_test_only_blocked "n1 busy with rec-blocker ($BLOCKER, --time=2)" "sbatch --test-only -p multinode -N 3 --time=1 -o /dev/null --wrap true"
txt squeue_running "rec-blocker ($BLOCKER) and rec-completed ($COMPLETED) running" "$SQ $BLOCKER,$COMPLETED"
txt scontrol_show_job_running "rec-blocker, running" "scontrol show job $BLOCKER"
json squeue_invalid_id "an id that never existed (squeue answers a purged one the same way)" "$SQ $UNKNOWN"
json squeue_mixed_valid_invalid "a running job and an unknown id" "$SQ $BLOCKER,$UNKNOWN"
states squeue_states_running "--only-job-state: rec-blocker ($BLOCKER) and rec-completed ($COMPLETED) running" "$BLOCKER,$COMPLETED"
[[ -z $STATES_ONLY ]] || json squeue_states_unknown "--only-job-state: a running job and an unknown id" "$STATES_ONLY $BLOCKER,$UNKNOWN"
json sacct_unknown_id "" "$SA $UNKNOWN"
txt state_running "the ledger's state_command of a running job" "$(state_command "$BLOCKER")"
txt state_unknown "the ledger's state_command of an id that never existed" "$(state_command "$UNKNOWN")"
txt lookup_running "the ledger's lookup_command for rec-completed (run folder $WORK/completed) while it runs" "$(lookup_command rec-completed "$WORK/completed")"

wait_for "$FAILED" 30 FAILED
# pending jobs, each with a reason of its own
submit P_TIME pend-timelimit -p short --time=5 --wrap true
submit P_CPUS pend-cpus -p debug -c $((NCPUS + 1)) --time=1 --wrap true
submit P_NODES pend-nodes -p debug -N 2 --time=1 --wrap true
submit P_HELD pend-held -p debug --hold --time=1 --wrap true
submit P_DEP pend-dependency -p debug --dependency=afterok:"$BLOCKER" --time=1 --wrap true
submit P_NEVER pend-never -p debug --dependency=afterok:"$FAILED" --time=1 --wrap true
PENDING_IDS=$(ids "$P_TIME" "$P_CPUS" "$P_NODES" "$P_HELD" "$P_DEP" "$P_NEVER")
wait_estimate "$MULTI" 45
sleep 2
txt squeue_pending_start "rec-multinode ($MULTI, -N 3) pending behind rec-blocker ($BLOCKER) on n1" "$SQ $MULTI,$BLOCKER"
txt squeue_pending_reasons "$P_TIME: -p short --time=5 (MaxTime=1); $P_CPUS: -c $((NCPUS + 1)) ($NCPUS-CPU node); $P_NODES: -N 2 in a 1-node partition; $P_HELD: --hold; $P_DEP: afterok on the running $BLOCKER; $P_NEVER: afterok on the failed $FAILED" "$SQ $PENDING_IDS"
txt scontrol_show_job_pending "rec-pend-timelimit ($P_TIME)" "scontrol show job $P_TIME"
states squeue_states_pending "--only-job-state: rec-multinode ($MULTI) pending behind rec-blocker ($BLOCKER), and the rec-pend-* jobs" "$(ids "$MULTI" "$BLOCKER" "$PENDING_IDS")"
txt sacct_running_pending "rec-blocker running; rec-multinode and the rec-pend-* jobs pending" "$SA $BLOCKER,$MULTI,$PENDING_IDS"
txt state_pending "the ledger's state_command of a pending job (rec-pend-held)" "$(state_command "$P_HELD")"

# an out-of-memory job and an array (task 1 fails), on the node's CPU that rec-timeout leaves
submit OOM oom -p debug "$WORK/oom.sh"
submit ARRAY array -p debug --array=0-2%1 --time=1 --wrap 'sleep 4; [ "$SLURM_ARRAY_TASK_ID" != 1 ]'
wait_for "$ARRAY" 60 RUNNING
txt squeue_array_running "rec-array ($ARRAY, --array=0-2%1): one task running, the rest pending" "$SQ $ARRAY"
states squeue_states_array "--only-job-state: rec-array ($ARRAY, --array=0-2%1): one task running, the rest pending" "$ARRAY"
txt active_array "parse.active_jobs_script while rec-array runs, with an unknown id" "$(active_command "$ARRAY,$UNKNOWN")"
txt active_unknown "parse.active_jobs_script of an unknown id only" "$(active_command "$UNKNOWN")"

# cancel the blocker while it runs (rec-multinode starts) and the pending ones
scancel "$BLOCKER"
# shellcheck disable=SC2086
[[ -z $PENDING_IDS ]] || scancel ${PENDING_IDS//,/ }
wait_for "$MULTI" 60 RUNNING
for _ in $(seq 10); do squeue -h -s -j "$MULTI" -o %i 2>/dev/null | grep -qE '\.[0-9]+$' && break; sleep 1; done
txt squeue_steps "the launchers' step listing of rec-multinode ($MULTI, srun sleep 6 on 3 nodes)" "squeue -h -s -j $MULTI -o %i"

wait_for "$TIMEOUT" 150 TIMEOUT
ALL=$(ids "$TIMEOUT" "$COMPLETED" "$FAILED" "$OOM" "$BLOCKER" "$GPU" "$MULTI" "$ARRAY")
for id in ${ALL//,/ }; do wait_for "$id" 60 COMPLETED FAILED CANCELLED TIMEOUT OUT_OF_MEMORY; done
settled "$(ids "$ALL" "$PENDING_IDS")"
txt sacct_completed "rec-completed: python3 busy 4 s, ~40 MB list, --mem=100M --time=2" "$SA $COMPLETED"
txt sacct_failed "rec-failed: sleep 3; exit 3" "$SA $FAILED"
txt sacct_timeout "rec-timeout: -p short --time=1, sleep 300" "$SA $TIMEOUT"
txt sacct_out_of_memory "rec-oom: --mem=50M, python3 allocating 200 MB" "$SA $OOM"
txt sacct_cancelled "rec-blocker: -p multinode -w n1 --time=2, scancel while RUNNING" "$SA $BLOCKER"
txt sacct_cancelled_pending "the rec-pend-* jobs: scancel while PENDING" "$SA $PENDING_IDS"
txt sacct_gpu "rec-gpu: --gres=gpu:1, sleep 3" "$SA $GPU"
txt sacct_multinode "rec-multinode: -p multinode -N 3, srun sleep 6" "$SA $MULTI"
txt sacct_array "rec-array: --array=0-2%1, sleep 4, task 1 exits 1" "$SA $ARRAY"
txt sacct_batch "all the jobs above in one call, as the watcher asks" "$SA $ALL"
txt sacct_jobs_only "rec-failed and rec-array: job rows only" "sacct -X -P -n -o JobID,State -j $FAILED,$ARRAY"
txt squeue_terminal "every rec- job after its end, before MinJobAge" "$SQ $(ids "$ALL" "$PENDING_IDS")"
states squeue_states_terminal "--only-job-state: every rec- job after its end, before MinJobAge" "$(ids "$ALL" "$PENDING_IDS")"
txt scontrol_show_job_failed "rec-failed, ended" "scontrol show job $FAILED"
txt state_completed "the ledger's state_command of an ended job (rec-completed)" "$(state_command "$COMPLETED")"
txt state_array_ended "the ledger's state_command of the ended array" "$(state_command "$ARRAY")"
txt lookup_ended "the ledger's lookup_command for rec-completed after its end" "$(lookup_command rec-completed "$WORK/completed")"
txt active_ended "parse.active_jobs_script of ended jobs (still in squeue -t all)" "$(active_command "$COMPLETED,$ARRAY")"
chmod 0644 "$OUT"/*
log "done: $(ls "$OUT" | wc -l) recordings in $OUT"
