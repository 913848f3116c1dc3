"""Local mode for partition ranges and fan-outs: the tasks run as subprocesses here, a bounded number at
a time, each with its own Pipes context and messages file (the same results as a Slurm job array)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from dagster import open_pipes_session
from dagster_pipes import encode_param

from dagster_slurm.pipes.tasks import (
    CapturedContext,
    Kind,
    Task,
    TaskMessages,
    TaskMessagesReader,
    TaskOutcome,
    close_session,
    finish,
    task_contexts,
)


def run_local_tasks(context, command: Sequence[str], env: Mapping[str, str], extras: Mapping[str, object] | None,
                    kind: Kind, keys_or_items: Sequence[object], max_concurrent: int | None):
    injector, reader = CapturedContext(), TaskMessagesReader()
    with open_pipes_session(context=context, context_injector=injector, message_reader=reader,
                            extras=extras) as session, tempfile.TemporaryDirectory(prefix="dagster-slurm-") as tmp:
        tasks = task_contexts(context, injector.data, kind, keys_or_items, extras)
        workers = max(1, min(max_concurrent or os.cpu_count() or 1, len(tasks)))
        stop = threading.Event()
        processes: dict[int, subprocess.Popen] = {}

        def one(task: Task) -> TaskOutcome:
            ctx, msgs = os.path.join(tmp, f"context.{task.index}.json"), os.path.join(tmp, f"messages.{task.index}.jsonl")
            with open(ctx, "w") as fh:
                json.dump(task.context, fh)
            if stop.is_set():
                return TaskOutcome(task, "CANCELLED")
            bootstrap = {"DAGSTER_PIPES_CONTEXT": encode_param({"path": ctx}),
                         "DAGSTER_PIPES_MESSAGES": encode_param({"path": msgs})}
            process = subprocess.Popen(list(command), env={**os.environ, **env, **bootstrap},
                                       stderr=subprocess.PIPE, text=True, errors="replace")
            processes[task.index] = process
            _, stderr = process.communicate()
            if stderr:
                for line in stderr.splitlines():
                    print(f"[{task.label}] {line}", file=sys.stderr)
            messages = TaskMessages(context, reader, task.label)
            if os.path.exists(msgs):
                with open(msgs, "rb") as fh:
                    for raw in fh:
                        messages.line(raw)
            rc = process.returncode
            return TaskOutcome(task, "COMPLETED" if rc == 0 else ("CANCELLED" if stop.is_set() else "FAILED"),
                               exit_code=rc, opened=messages.opened, results=messages.results(),
                               stderr_tail="\n".join(stderr.splitlines()[-20:]), exception=messages.exception)

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dagster-slurm-local")
        futures = [pool.submit(one, t) for t in tasks]
        try:
            outcomes = [f.result() for f in futures]
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning("Run terminated: stopping the local tasks.")
            stop.set()
            for p in processes.values():
                if p.poll() is None:
                    p.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        close_session(session, outcomes)
    return finish(context, kind, outcomes, {"tasks": len(tasks), "mode": "local"})
