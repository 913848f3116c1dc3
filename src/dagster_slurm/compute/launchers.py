"""Launchers turn a payload path into the command that runs it."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import dagster as dg
from dagster_pipes import encode_param
from pydantic import Field, model_validator

from dagster_slurm.config.strict import reject_unknown


class Launcher(dg.Config):
    """How a payload starts: subclass it and give ``compute.run(..., launcher=MyLauncher())``.

    ``command(payload, local=...)`` receives the payload's path (Slurm mode: its name in the run folder,
    which is the job's working directory, or the absolute remote path of a pre-deployed payload; local
    mode: the absolute local path) and returns the argv to run. In Slurm mode that argv runs in the job
    script after the environment's ``activate.sh`` was sourced, with the Pipes bootstrap and ``extra_env``
    in the environment; each element is shell-quoted (no shell expansion). Fields are Dagster config.
    Example::

        class UnbufferedLauncher(Launcher):
            def command(self, payload, *, local):
                return ["python", "-u", payload]
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_settings(cls, data):
        return reject_unknown(cls, data)

    def command(self, payload: str, *, local: bool) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} must define command(payload, *, local) -> list[str]")

    def sbatch_directives(self) -> dict[str, str]:
        """sbatch options this launcher needs (e.g. ``ntasks-per-node``); the queue settings and the
        asset's resource requirements win over them."""
        return {}

    def job_env(self) -> dict[str, str]:
        """Environment variables the job script exports for this launcher (Slurm mode)."""
        return {}


class BashLauncher(Launcher):
    """Run a Python payload with an interpreter, from a bash job script (Slurm) or a subprocess (local).

    In Slurm mode the interpreter is looked up on PATH after the environment's ``activate.sh`` was
    sourced; in local mode ``python`` means the interpreter running Dagster.
    """

    python: str = Field(default="python", description="Interpreter to run the payload with.")
    args: list[str] = Field(default_factory=list, description="Extra arguments passed to the payload.")

    def command(self, payload: str, *, local: bool) -> list[str]:
        python = sys.executable if local and self.python == "python" else self.python
        return [python, payload, *self.args]


# Runs as each rank of a multi-rank job: says which rank it is, lets only rank 0 write Dagster Pipes
# messages (the others read the same context, extras included, and write their messages to
# $DAGSTER_SLURM_PIPES_OFF, which points at /dev/null), and prefixes every line of the rank's stdout and
# stderr with "[rank R@node]". RANK is torchrun's global rank; SLURM_PROCID srun's task rank.
RANK_SHIM = r"""r=${RANK:-${SLURM_PROCID:-0}}
where="rank $r@${SLURMD_NODENAME:-$(hostname -s)}"
export DAGSTER_SLURM_RANK="$r" DAGSTER_SLURM_WORLD_SIZE="${WORLD_SIZE:-${SLURM_NTASKS:-1}}" PYTHONUNBUFFERED=1
if [ "$r" != 0 ]; then export DAGSTER_PIPES_MESSAGES="$DAGSTER_SLURM_PIPES_OFF"; fi
exec "$@" > >(exec sed -u "s/^/[$where] /") 2> >(exec sed -u "s/^/[$where] /" >&2)
"""

# srun in the allocation; --cpus-per-task is passed on explicitly (srun of Slurm 22.05 no longer
# inherits it from sbatch). A rank that fails ends the others (--kill-on-bad-exit). In a step of a shared
# allocation the ranks run on the step's own nodes (DAGSTER_SLURM_STEP_NODES, see slurm/allocation.py).
_SRUN = r"""exec srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
  ${DAGSTER_SLURM_STEP_NODES:+--nodelist=$DAGSTER_SLURM_STEP_NODES} "$@"
"""

# One torchrun per node; the rendezvous (c10d) on the allocation's first node, at the address Slurm
# knows it by and a port free there (this script runs on that node).
_TORCHRUN = r"""set -eu
nproc=$1 torchrun=$2 port=$3; shift 3
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
addr=$(scontrol show node "$head" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
if [ -z "$port" ]; then
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
fi
echo "[torchrun] rendezvous at ${addr:-$head}:$port on $SLURM_JOB_NUM_NODES node(s), $nproc process(es) each" >&2
exec srun --kill-on-bad-exit=1 --ntasks-per-node=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
  ${DAGSTER_SLURM_STEP_NODES:+--nodelist=$DAGSTER_SLURM_STEP_NODES} "$torchrun" --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node="$nproc" --rdzv-backend=c10d \
  --rdzv-endpoint="${addr:-$head}:$port" --rdzv-id="$SLURM_JOB_ID" --no-python "$@"
"""


# A Ray cluster on the allocation: the head on the first node (the batch host), a worker on each other node
# (one srun step each), every node with its own free ports (nodes may share a host) and, when Slurm knows
# the node by an IP address, that address. The payload runs on the head with RAY_ADDRESS set once every node
# has joined (bounded); whatever happens, the Ray steps (named $tag: only its own, in a shared allocation)
# are killed when the script leaves.
_RAY = r"""set -u
ray=$1 bound=$2 more=$3; shift 3
node_ip() { scontrol show node "$1" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1; }
free_ports() { python -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"; }
export -f node_ip free_ports
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
others=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tail -n +2 | paste -sd, -)
tag=ray-$SLURM_JOB_ID.${SLURM_STEP_ID:-batch}
head_host=$(hostname)
export ray more head_host
nnodes=$SLURM_JOB_NUM_NODES
head_ip=$(node_ip "$head")
gcs="${head_ip:-$head}:$(free_ports 1)"
# Ray names each node's files in the (host-wide) session folder when it starts: nodes that share a host
# start a few seconds apart, or two of them pick the same names
node='extra=("$@"); ip=$(node_ip "$SLURMD_NODENAME"); opt=()
[ "$(hostname)" != "$head_host" ] || sleep $((3 * ${SLURM_NODEID:-0}))
case "$ip" in ""|*[!0-9.]*) ;; *) opt=(--node-ip-address="$ip") ;; esac
set -- $(free_ports 6); low=$((20000 + 1000 * ${SLURM_NODEID:-0}))
exec "$ray" start --block --disable-usage-stats "${opt[@]}" --num-cpus="${SLURM_CPUS_ON_NODE:-1}" \
  --node-manager-port="$1" --object-manager-port="$2" --metrics-export-port="$3" \
  --dashboard-agent-listen-port="$4" --dashboard-agent-grpc-port="$5" --runtime-env-agent-port="$6" \
  --min-worker-port="$low" --max-worker-port="$((low + 999))" $more "${extra[@]}" 2>&1 | sed -u "s/^/[ray $SLURMD_NODENAME] /" >&2'
cleanup() {
  for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o '%i %j' 2>/dev/null | awk -v t="$tag" '$2 == t {print $1}'); do
    scancel -Q -s KILL "$step" 2>/dev/null
  done
}
trap cleanup EXIT
fail() { echo "dagster-slurm: $*" >&2; exit 1; }
joined() { "$ray" status --address="$gcs" 2>/dev/null | grep -cE '^ *1 node_'; }
t0=$SECONDS
srun --job-name="$tag" --nodes=1 --ntasks=1 -w "$head" bash -c "$node" ray-head --head --port="${gcs##*:}" --include-dashboard=false &
pids=$!
wait_for() {  # wait_for N: until N nodes have joined, or fail saying why
  while [ "$(joined)" -lt "$1" ]; do
    for pid in $pids; do kill -0 "$pid" 2>/dev/null || fail "a Ray node exited before all $nnodes had joined (its lines above: [ray <node>])"; done
    [ $((SECONDS - t0)) -lt "$bound" ] || fail "only $(joined) of $nnodes Ray nodes joined within ${bound}s (RayLauncher.start_timeout)"
    sleep 0.5
  done
}
wait_for 1
if [ "$nnodes" -gt 1 ]; then
  srun --job-name="$tag" --nodes=$((nnodes - 1)) --ntasks=$((nnodes - 1)) --ntasks-per-node=1 -w "$others" \
    bash -c "$node" ray-worker --address="$gcs" &
  pids="$pids $!"
fi
wait_for "$nnodes"
echo "[ray] cluster of $nnodes node(s) at $gcs up after $((SECONDS - t0))s" >&2
RAY_ADDRESS=$gcs "$@"
"""


def _local_rank_zero(python: str, payload: str, args: Sequence[str], **extra: str) -> list[str]:
    """Local mode of a multi-rank launcher: one process, rank 0 of 1."""
    env = {"DAGSTER_SLURM_RANK": "0", "DAGSTER_SLURM_WORLD_SIZE": "1", **extra}
    return ["env", *(f"{k}={v}" for k, v in env.items()), sys.executable if python == "python" else python,
            payload, *args]


class _MultiRank(Launcher):
    def job_env(self) -> dict[str, str]:
        return {"DAGSTER_SLURM_PIPES_OFF": encode_param({"path": "/dev/null"})}  # see RANK_SHIM


class SrunLauncher(_MultiRank):
    """Run the payload on every task of the allocation with ``srun`` (MPI style): ``num_nodes`` nodes
    times ``ntasks_per_node`` ranks.

    Rank 0 writes the Dagster Pipes messages; the other ranks get the same context (extras, partition
    key) but their messages are dropped, so the payload needs no rank checks for Pipes. A payload learns
    its rank from ``DAGSTER_SLURM_RANK`` (and the world size from ``DAGSTER_SLURM_WORLD_SIZE``), as well as
    Slurm's own ``SLURM_PROCID``/``SLURM_NTASKS``. Every line a rank prints reaches the compute logs
    prefixed ``[rank R@node]``. In local mode the payload runs once, as rank 0 of 1.
    """

    ntasks_per_node: int | None = Field(default=None, description="Ranks per node (--ntasks-per-node); "
                                        "None: the allocation's (one per node unless set elsewhere).")
    mpi: str | None = Field(default=None, description="srun --mpi plugin, e.g. 'pmi2'; None: the cluster's default.")
    python: str = Field(default="python", description="Interpreter to run the payload with.")
    args: list[str] = Field(default_factory=list, description="Extra arguments passed to the payload.")
    srun_args: list[str] = Field(default_factory=list, description="Further srun arguments, e.g. ['--cpu-bind=cores'].")

    def sbatch_directives(self) -> dict[str, str]:
        return {"ntasks-per-node": str(self.ntasks_per_node)} if self.ntasks_per_node else {}

    def command(self, payload: str, *, local: bool) -> list[str]:
        if local:
            return _local_rank_zero(self.python, payload, self.args)
        options = [f"--ntasks-per-node={self.ntasks_per_node}"] if self.ntasks_per_node else []
        options += [f"--mpi={self.mpi}"] if self.mpi else []
        return ["bash", "-c", _SRUN, "dagster-slurm-srun", *options, *self.srun_args,
                "bash", "-c", RANK_SHIM, "dagster-slurm-rank", self.python, payload, *self.args]


class TorchrunLauncher(_MultiRank):
    """Distributed PyTorch: one ``torchrun`` per node (started by srun), ``nproc_per_node`` processes
    each, rendezvous (c10d) on the allocation's first node at a free port; ``--nnodes`` comes from the
    allocation. The payload calls ``torch.distributed.init_process_group()`` as under any torchrun
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``... are set). Pipes and log prefixes as for
    :class:`SrunLauncher` (global rank 0 writes the messages). In local mode: one process, rank 0 of 1,
    with ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``, so ``init_process_group`` works unchanged.
    """

    nproc_per_node: int = Field(default=1, description="Processes per node (torchrun --nproc-per-node).")
    rdzv_port: int | None = Field(default=None, description="Rendezvous port on the first node; None: a free one.")
    torchrun: str = Field(default="torchrun", description="The torchrun executable (from the environment).")
    python: str = Field(default="python", description="Interpreter each process runs the payload with.")
    args: list[str] = Field(default_factory=list, description="Extra arguments passed to the payload.")

    def sbatch_directives(self) -> dict[str, str]:
        return {"ntasks-per-node": "1"}

    def command(self, payload: str, *, local: bool) -> list[str]:
        if local:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            return _local_rank_zero(self.python, payload, self.args, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                                    LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return ["bash", "-c", _TORCHRUN, "dagster-slurm-torchrun", str(self.nproc_per_node), self.torchrun,
                str(self.rdzv_port or ""), "bash", "-c", RANK_SHIM, "dagster-slurm-rank", self.python, payload,
                *self.args]


class RayLauncher(Launcher):
    """A Ray cluster on the allocation: the head on the first node, a worker on each other node (started
    by srun, each with its own ports, so nodes may share a host), then the payload on the head with
    ``RAY_ADDRESS`` set, once all ``num_nodes`` have joined (``ray.init()`` needs no arguments). A node that
    cannot join within ``start_timeout`` fails the step with the reason; the Ray processes are killed when
    the payload ends, whatever happens. Ray's own lines reach the compute logs prefixed ``[ray <node>]``.
    The environment must provide ``ray`` (``pip install ray``). Local mode: the payload runs as is
    (``ray.init()`` then starts a local Ray)."""

    ray: str = Field(default="ray", description="The ray executable (from the environment).")
    start_timeout: float = Field(default=180.0, description="Seconds for all nodes to join the Ray cluster.")
    ray_start_args: list[str] = Field(default_factory=list, description="Further `ray start` arguments for every "
                                      "node, e.g. ['--object-store-memory=2000000000'].")
    python: str = Field(default="python", description="Interpreter to run the payload with.")
    args: list[str] = Field(default_factory=list, description="Extra arguments passed to the payload.")

    def command(self, payload: str, *, local: bool) -> list[str]:
        if local:
            return [sys.executable if self.python == "python" else self.python, payload, *self.args]
        return ["bash", "-c", _RAY, "dagster-slurm-ray", self.ray, str(int(self.start_timeout)),
                " ".join(shlex.quote(a) for a in self.ray_start_args), self.python, payload, *self.args]

