"""Job identity and fingerprint: what reattaches and what does not."""

import dagster as dg

from dagster_slurm.compute.identity import CallCounter, StepCall, fingerprint, step_call


def _call(**kw) -> StepCall:
    return StepCall(**{"root_run_id": "root", "run_id": "run", "step_key": "asset", "partition": "",
                       "retry": 0, "ordinal": 0, **kw})


def test_identity_is_stable_across_reexecution_and_retry():
    assert _call().identity == _call(run_id="other-run", retry=2).identity


def test_identity_differs_for_what_must_not_share_a_job():
    base = _call().identity
    assert _call(root_run_id="root2").identity != base
    assert _call(partition="2024-01-01").identity != base
    assert _call(ordinal=1).identity != base
    prefix = "a" * 120
    one, two = _call(step_key=prefix + "_x"), _call(step_key=prefix + "_y")
    assert one.identity != two.identity
    assert one.readable == two.readable  # the label is cut, the identity is not


def test_call_counter_numbers_calls_per_step_attempt():
    counter = CallCounter(keep=2)
    assert [counter.next("r", "s", 0) for _ in range(3)] == [0, 1, 2]
    assert counter.next("r", "s", 1) == 0  # a step retry counts afresh
    assert counter.next("r2", "s", 0) == 0
    assert counter.next("r", "s", 0) == 0  # evicted (keep=2): bounded memory


def test_fingerprint_follows_what_the_job_runs():
    args = {"payload": b"print(1)", "command": ["python", "p.py"], "directives": {"mem": "1G"},
            "env_path": "/env", "extras": {"a": 1}, "extra_env": {"K": "secret"}}
    base = fingerprint(**args)
    assert fingerprint(**{**args, "directives": {"mem": "1G"}}) == base
    for change in ({"payload": b"print(2)"}, {"command": ["python3", "p.py"]}, {"directives": {"mem": "2G"}},
                   {"env_path": "/env2"}, {"extras": {"a": 2}}, {"extra_env": {"K": "other"}}):
        assert fingerprint(**{**args, **change}) != base, change
    assert "secret" not in base


def test_step_call_reads_the_dagster_context():
    seen = []

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["p1", "p2"]))
    def part(context: dg.AssetExecutionContext):
        seen.append(step_call(context))
        seen.append(step_call(context))

    result = dg.materialize([part], partition_key="p2")
    first, second = seen
    assert (first.root_run_id, first.run_id, first.step_key, first.partition) == (result.run_id,) * 2 + ("part", "p2")
    assert (first.ordinal, second.ordinal) == (0, 1)
