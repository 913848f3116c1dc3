#!/usr/bin/env bash
# record_steps.sh OUTDIR - record what one Slurm release prints for a shared allocation's steps (the holder's
# srun --exact steps, as dagster-slurm's watcher and ledger ask about them). Same layout and header as
# record_release.sh (OUTDIR/<X.Y>/NAME.txt); read by tests/unit/test_step_outputs.py. ~20 s.
#
#   scripts/slurm-matrix.sh run 26.05 -- bash -c 'runuser -u slurmuser -- bash \
#       /work/project/tests/data/slurm/record_steps.sh /work/project/tests/data/slurm/releases'
#   su - slurmuser -c 'bash /path/to/tests/data/slurm/record_steps.sh /path/to/tests/data/slurm/releases'
set -uo pipefail
umask 022
OUT_ROOT=$(realpath "${1:?usage: record_steps.sh OUTDIR}")
PROJECT=$(cd "$(dirname "$0")/../../.." && pwd)
FROM=$(sbatch -V); FULL=$(awk '{print $2}' <<<"$FROM"); RELEASE=$(cut -d. -f1,2 <<<"$FULL")
OUT=$OUT_ROOT/$RELEASE
mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rec-steps.XXXXXX") || exit 1
chmod 0755 "$WORK"; cd "$WORK" || exit 1
SACCT_FIELDS=$(python3 -c "
import ast, sys
ns = {}
for node in ast.parse(open(sys.argv[1]).read()).body:
    if isinstance(node, ast.Assign) and {getattr(t, 'id', None) for t in node.targets} & {'GPU_FIELDS', 'SACCT_FIELDS'}:
        exec(compile(ast.Module([node], []), sys.argv[1], 'exec'), ns)
print(ns['SACCT_FIELDS'])" "$PROJECT/src/dagster_slurm/slurm/parse.py")
JOB=
trap '[ -z "$JOB" ] || scancel "$JOB" 2>/dev/null; rm -rf "$WORK"' EXIT
txt() {
    bash -c "$3" >"$WORK/.out" 2>"$WORK/.err"
    { printf '# %s  (slurm %s, recorded %s)\n# %s\n' "$3" "$FULL" "$(date -Iseconds)" "$2"
      printf "# lines starting with '# ' are this header; the rest is raw stdout\n"; cat "$WORK/.out"; } >"$OUT/$1.txt"
    [ ! -s "$WORK/.err" ] || echo "record_steps $RELEASE: $1: $(head -c 300 "$WORK/.err")" >&2
}
JOB=$(sbatch --parsable -J rec-alloc -o /dev/null -p debug -c 2 --mem=256M --time=2 --wrap \
  'srun --exact -n1 -c1 --mem=64M -J rec-step-long sleep 8 & sleep 1; srun --exact -n1 -c1 --mem=64M -J rec-step-short sleep 1; wait')
JOB=${JOB%%;*}
for _ in $(seq 60); do squeue -h -s -j "$JOB" -o %i 2>/dev/null | grep -q "^$JOB\.0$" && break; sleep 0.5; done
sleep 3
txt squeue_alloc_steps "rec-alloc ($JOB): step 0 runs (sleep 8), step 1 has ended; with an unknown job id" \
    "squeue -h -s -j $JOB,999999 -o '%i'"
txt sacct_step_running "the watcher's sacct of step $JOB.0 while it runs" "sacct -P -n -o $SACCT_FIELDS -j $JOB.0"
for _ in $(seq 60); do [ "$(sacct -X -n -P -o State -j "$JOB")" = COMPLETED ] && break; sleep 1; done
txt sacct_steps_ended "the watcher's sacct of steps $JOB.0 and $JOB.1 after the end" "sacct -P -n -o $SACCT_FIELDS -j $JOB.0,$JOB.1"
txt state_step "the ledger's state_command of ended step $JOB.1" "echo rc=0; echo @@; { sacct -P -n -o JobID,State -j $JOB.1; echo \"rc=\$?\"; } 2>&1"
txt squeue_alloc_steps_ended "squeue --steps of the ended allocation" "squeue -h -s -j $JOB -o '%i'"
JOB=
chmod 0644 "$OUT"/squeue_alloc_steps*.txt "$OUT"/sacct_step*.txt "$OUT"/state_step.txt
echo "record_steps $RELEASE: done" >&2
