"""The cache never lies: what a step key holds, the guard that a step sees nothing its key does not hold, the
per-op semantic versions with their committed implementation digests, and --recompute."""

import importlib
import json
import sys
import textwrap

import pytest

from heredity.store import ops
from heredity.store.store import KeyCoverageError, step_key

# ---- the key -------------------------------------------------------------------------------------


def test_key_holds_op_version_config_inputs_seed():
    base = step_key("sample", {"n": 1}, ["m-0123456789abcdef"], 0)
    assert base == step_key("sample", {"n": 1}, ["m-0123456789abcdef"], 0)  # same step, same key
    assert base != step_key("sample", {"n": 2}, ["m-0123456789abcdef"], 0)
    assert base != step_key("sample", {"n": 1}, ["m-fedcba9876543210"], 0)
    assert base != step_key("sample", {"n": 1}, ["m-0123456789abcdef"], 1)
    assert base != step_key(
        "sample", {"n": 1}, ["m-0123456789abcdef"], 0, version=ops.op_version("sample") + 1
    )
    assert ops.op_version("report-merging") == ops.registry()["report-*"].version
    assert ops.op_version("my-own-op") is None


def test_a_new_op_version_recomputes_an_existing_store(store, monkeypatch):
    store.check_keys = False  # the counter below is the test's, not part of any result
    calls = []

    def fn(ctx):
        calls.append(1)
        (ctx.output("dataset", "dataset", "d") / "x.txt").write_text("x")

    store.run_step("make-dataset", {"rows_sha256": "0" * 64}, [], fn)
    store.run_step("make-dataset", {"rows_sha256": "0" * 64}, [], fn)
    assert len(calls) == 1  # memoized
    monkeypatch.setitem(ops.OPS, "make-dataset", ops.Op(ops.OPS["make-dataset"].version + 1, ops.PUT_ROWS))
    r = store.run_step("make-dataset", {"rows_sha256": "0" * 64}, [], fn)
    assert len(calls) == 2 and not r.cached  # the op's meaning changed: the old result is not returned


# ---- the guard -----------------------------------------------------------------------------------


def _out(ctx, text="x"):
    (ctx.output("scores", "report", "r") / "s.json").write_text(text)


def test_guard_rejects_a_value_the_key_does_not_hold(store):
    assert store.check_keys  # conftest turns the guard on for every test
    samples, batch_size = 5, 16

    def reads_unkeyed(ctx):
        _out(ctx, json.dumps([samples, batch_size]))

    with pytest.raises(KeyCoverageError, match="batch_size"):
        store.run_step("eval-trait", {"samples": 5}, [], reads_unkeyed)
    store.run_step("eval-trait", {"samples": 5, "batch_size": 16}, [], reads_unkeyed)  # keyed: fine
    # a value of the same name but another value is not the keyed one
    with pytest.raises(KeyCoverageError, match="batch_size"):
        store.run_step("eval-trait", {"samples": 5, "batch_size": 32}, [], reads_unkeyed)


def test_guard_rejects_a_whole_config_when_only_part_is_keyed(store):
    from heredity.experiments.subliminal_numbers import Config

    config = Config()

    def fn(ctx):
        _out(ctx, str(config.sample_batch))

    with pytest.raises(KeyCoverageError, match="'config'"):
        store.run_step("eval-trait", {"samples": config.eval_samples}, [], fn)
    store.run_step(
        "eval-trait", {"experiment": config.model_dump(mode="json")}, [], fn
    )  # the whole config keyed


def test_guard_accepts_rows_keyed_by_digest_and_input_ids(store):
    from heredity.data.io import put_rows, rows_digest

    rows = [{"a": 1}, {"a": 2}]
    did = put_rows(store, rows, "rows")
    ids = [did]

    def fn(ctx):
        _out(ctx, json.dumps([rows, ids]))

    store.run_step("eval-tasks", {"rows_sha256": rows_digest(rows)}, [did], fn)
    with pytest.raises(KeyCoverageError, match="'rows'"):
        store.run_step("eval-tasks", {"rows_sha256": rows_digest([{"a": 3}])}, [did], fn)


def test_eval_steps_key_their_batch_size():
    """The bug the guard found: eval-trait and measure-canaries left sample_batch out of their keys."""
    from heredity.experiments import canaries
    from heredity.experiments import subliminal_numbers as sn

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self):
            self.cfgs = []

        def run_step(self, op, cfg, inputs, fn, seed=None):
            self.cfgs.append(cfg)
            raise Stop

    rec = Recorder()
    for b in (16, 64):
        with pytest.raises(Stop):
            sn.evaluate(rec, "m-0123456789abcdef", sn.Config(sample_batch=b), None, progress=False)
        with pytest.raises(Stop):
            canaries._measure_step(
                rec, "m-0123456789abcdef", "d-0123456789abcdef", canaries.Config(sample_batch=b), False
            )
    assert rec.cfgs[0] != rec.cfgs[2] and rec.cfgs[1] != rec.cfgs[3]


# ---- per-op versions and implementation digests -------------------------------------------------


def test_every_op_matches_its_committed_digest():
    """Fails when an op's implementation changed without a deliberate decision: bump the op's version in
    heredity/store/ops.py if its results can change, then `python -m heredity.store.ops --update`."""
    recorded = json.loads(ops.DIGESTS.read_text())
    assert ops.changed(recorded) == []


def test_digest_follows_the_implementation_and_ignores_the_unrelated(tmp_path, monkeypatch):
    pkg = tmp_path / "heredity_fake_op"
    pkg.mkdir()
    src = pkg / "__init__.py"
    body = textwrap.dedent("""
        RULE = 3

        def helper(x):
            return x * RULE

        def step(x):
            return helper(x) + 1

        def unrelated(x):
            return x - 1
    """)
    src.write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        ops, "_ours", lambda o: (getattr(o, "__module__", "") or "").startswith("heredity_fake_op")
    )
    monkeypatch.setattr(ops, "_ours_module", lambda m: m.__name__.startswith("heredity_fake_op"))
    monkeypatch.setitem(ops.OPS, "fake", ops.Op(1, ("heredity_fake_op:step",)))

    def digest(text):
        src.write_text(text)
        sys.modules.pop("heredity_fake_op", None)
        importlib.invalidate_caches()
        return ops.implementation_digest("fake")

    d0 = digest(body)
    assert digest(body) == d0
    assert digest(body.replace("return x - 1", "return x - 2")) == d0  # an unrelated function: same digest
    assert digest(body.replace("x * RULE", "x * RULE * 2")) != d0  # a helper it calls: new digest
    assert digest(body.replace("RULE = 3", "RULE = 4")) != d0  # a module constant it reads: new digest
    assert digest(body.replace("helper(x) + 1", "helper(x) + 2")) != d0


# ---- --recompute ---------------------------------------------------------------------------------


def test_recompute_reruns_an_op_and_what_depends_on_it(store):
    from heredity.data.io import put_rows

    store.check_keys = False  # the counters below are the test's, not part of any result
    runs = {"score": 0, "report": 0}
    did = put_rows(store, [{"a": 1}], "rows")

    def score(ctx):
        runs["score"] += 1
        _out(ctx, "same")  # the same output: only the recompute flag can make the report rerun

    def chain():
        sid = store.run_step("eval-tasks", {"v": 1}, [did], score)["scores"]

        def report(ctx):
            runs["report"] += 1
            (ctx.output("report", "report", "r") / "r.md").write_text(sid)

        return store.run_step("report-x", {"of": sid}, [sid], report)

    chain()
    assert chain().cached and runs == {"score": 1, "report": 1}
    store.recompute = {"eval-tasks"}
    r = chain()
    assert runs == {"score": 2, "report": 2} and not r.cached
    # the data step upstream was not recomputed
    assert put_rows(store, [{"a": 1}], "rows") == did


def test_recompute_cli_rejects_an_unknown_op(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "HEREDITY_HOME": str(tmp_path / "h")}
    r = subprocess.run(
        [sys.executable, "-m", "heredity.cli", "run", "subliminal-digits", "--recompute", "no-such-op"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode != 0 and "no such op" in (r.stdout + r.stderr) and "Traceback" not in r.stderr
