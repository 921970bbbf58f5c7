"""Issue 33, items 9-12: concurrent identical outputs, an unambiguous content hash that keeps old stores
valid, fsck finding what a kill leaves behind, and user checkers keyed by their source."""

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

import heredity.store.store as store_mod
from heredity.store import Store
from heredity.store.db import ArtifactRow, ArtifactStepRow, StepRow
from heredity.store.store import _proc_start, hash_dir, step_key
from heredity.store.verify import manifest


def _url(backend: str, home: Path, request) -> str:
    if backend == "sqlite":
        return f"sqlite:///{home / 'heredity.db'}"
    import sqlalchemy

    base = request.getfixturevalue("postgres_url")
    db = f"hard{os.getpid()}_{abs(hash(str(home))) % 10**8}"
    with sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT").connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {db}")
        c.exec_driver_sql(f"CREATE DATABASE {db}")
    return base.rsplit("/", 1)[0] + "/" + db


def _write_text(ctx):
    """A step writing its config's text as its one dataset output."""
    (ctx.output("out", "dataset", "same") / "f.txt").write_text(ctx.config["text"])


# ---- 9: two different steps storing identical bytes at the same moment -------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_steps_storing_identical_bytes_at_once_both_finish(tmp_path, backend, request, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    url = _url(backend, home, request)
    stores = [Store(home, db_url=url) for _ in range(2)]
    # both commits look the artifact up before either inserts it: the race, every time (on SQLite the second
    # commit waits for the database's write lock instead, so the barrier times out and
    # the commits run in turn)
    barrier, local = threading.Barrier(2), threading.local()

    class RacingSession(Session):
        def get(self, entity, ident, **kw):
            row = super().get(entity, ident, **kw)
            if entity is ArtifactRow and row is None and not getattr(local, "waited", False):
                local.waited = True
                try:
                    barrier.wait(timeout=3)
                except threading.BrokenBarrierError:
                    pass
            return row

    monkeypatch.setattr(store_mod, "Session", RacingSession)
    results, errors = {}, {}

    def run(i):
        try:
            results[i] = stores[i].run_step(
                "write-same", {"text": "identical bytes", "n": i}, [], _write_text
            )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    monkeypatch.undo()
    assert not errors, {i: repr(e) for i, e in errors.items()}
    assert results[0]["out"] == results[1]["out"]
    fresh = Store(home, db_url=url)
    aid = results[0]["out"]
    assert all(fresh.find_step(r.key) is not None for r in results.values()), "both steps are recorded"
    assert sorted(st.config["n"] for st in fresh.producers(aid)) == [0, 1]
    assert fresh.fsck()["broken"] == {}
    again = fresh.run_step("write-same", {"text": "identical bytes", "n": 1}, [], _write_text)
    assert again.cached and again["out"] == aid


# ---- 10: the content hash is unambiguous; artifacts hashed the old way still verify ------------------------


def _files(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_hash_dir_no_longer_confuses_one_file_with_two(tmp_path):
    one = _files(tmp_path / "one", {"a": b"X\0b\0Y"})
    two = _files(tmp_path / "two", {"a": b"X", "b": b"Y"})
    assert hash_dir(one, 1) == hash_dir(two, 1), "version 1 is ambiguous (kept to verify old artifacts)"
    assert hash_dir(one) != hash_dir(two)
    nested = _files(tmp_path / "nested", {})
    (nested / "a").mkdir()
    (nested / "a" / "b").write_bytes(b"Y")
    assert len({hash_dir(one), hash_dir(two), hash_dir(nested)}) == 3


def test_one_file_and_two_files_are_two_artifacts(store):
    def write(files):
        def fn(ctx):
            out = ctx.output("out", "dataset", "x")
            for name, data in ctx.config["files"].items():
                (out / name).write_bytes(data.encode())

        return fn

    one = store.run_step("write-files", {"files": {"a": "X\0b\0Y"}}, [], write(None))["out"]
    two = store.run_step("write-files", {"files": {"a": "X", "b": "Y"}}, [], write(None))["out"]
    assert one != two
    assert sorted(p.name for p in store.path(two).iterdir()) == ["a", "b"]
    assert (store.path(one) / "a").read_bytes() == b"X\0b\0Y"


def _old_artifact(store: Store, text: str) -> tuple[str, str]:
    """An artifact stored as the code before hash versions stored it: id from hash_dir version 1, no
    hash_version; returns (artifact id, the key of the step ``write-old`` {"text": text} that made it)."""
    src = _files(store.tmp_dir / "old", {"f.txt": text.encode()})
    aid = f"d-{hash_dir(src, 1)[:16]}"
    assert aid != f"d-{hash_dir(src)[:16]}"
    os.rename(src, store.artifacts_dir / aid)
    key = step_key("write-old", {"text": text}, [], None)
    now = store_mod._now()
    with Session(store.engine) as s:
        s.add(
            StepRow(
                key=key,
                op="write-old",
                config={"text": text},
                inputs=[],
                outputs={"out": aid},
                seed=None,
                metrics={},
                code_version="0.old",
                lib_versions={},
                host="h",
                started_at=now,
                ended_at=now,
            )
        )
        s.flush()
        s.add(
            ArtifactRow(
                id=aid,
                kind="dataset",
                name="old",
                step_key=key,
                meta={},
                size_bytes=len(text),
                created_at=now,
                files=manifest(store.artifacts_dir / aid),
                verified_at=None,
            )
        )
        s.add(ArtifactStepRow(artifact_id=aid, step_key=key, made_at=now))
        s.commit()
    return aid, key


def test_artifact_stored_with_the_old_hash_still_verifies(tmp_path):
    home = tmp_path / "home"
    text = "old bytes\0with a NUL"
    aid, key = _old_artifact(Store(home), text)
    with sqlite3.connect(home / "heredity.db") as c:  # a database from before the column
        c.execute("ALTER TABLE artifacts DROP COLUMN hash_version")
    store = Store(home)  # adds the column back: NULL for every old row
    assert (store.get(aid).path / "f.txt").read_text() == text
    assert store.fsck()["broken"] == {}
    r = store.run_step("write-old", {"text": text}, [], _write_text)
    assert r.cached and r["out"] == aid, "a step recorded before keeps returning its artifact"
    f = store.artifacts_dir / aid / "f.txt"
    f.write_text(text.replace("old", "OLD"))  # same size: only the re-hash (version 1) sees it
    res = Store(home).fsck()
    assert list(res["broken"]) == [aid] and "hash to" in res["broken"][aid][0]
    assert Store(home).fsck(repair=True)["removed"] == [aid]
    again = Store(home)
    r = again.run_step("write-old", {"text": text}, [], _write_text)
    assert not r.cached and r["out"] == aid, "recomputed, the same bytes go back under the id recorded before"
    assert again.fsck()["broken"] == {} and (again.path(aid) / "f.txt").read_text() == text
    new = again.run_step("write-old", {"text": text + "!"}, [], _write_text)[
        "out"
    ]  # a new artifact: version 2
    with Session(again.engine) as s:
        assert s.get(ArtifactRow, aid).hash_version is None and s.get(ArtifactRow, new).hash_version == 2
    assert new == f"d-{hash_dir(again.path(new))[:16]}"


# ---- 11: fsck finds orphans, stale tmp and stale scratch directories, and --repair removes them ------------


def test_fsck_finds_and_removes_an_orphan_left_by_a_kill_before_the_commit(store, monkeypatch):
    kept = store.run_step("write", {"text": "kept"}, [], _write_text)["out"]

    class KilledAtCommit(Session):
        def commit(self):
            raise SystemExit("killed between the rename and the commit")

    monkeypatch.setattr(store_mod, "Session", KilledAtCommit)
    with pytest.raises(SystemExit):
        store.run_step("write", {"text": "orphaned"}, [], _write_text)
    monkeypatch.undo()
    (orphan,) = [p.name for p in store.artifacts_dir.iterdir() if p.name != kept]
    assert store.fsck()["orphans"] == [], "a directory renamed in this hour may be a commit in flight"
    res = store.fsck(stale_after=0)
    assert res["orphans"] == [orphan] and res["broken"] == {} and res["cleaned"] == []
    assert store.fsck(refs=[kept], stale_after=0)["orphans"] == [], (
        "only a whole-store check looks for leftovers"
    )
    res = store.fsck(repair=True, stale_after=0)
    assert res["cleaned"] == [f"artifacts/{orphan}"] and not (store.artifacts_dir / orphan).exists()
    assert (store.artifacts_dir / kept).is_dir()
    r = store.run_step("write", {"text": "orphaned"}, [], _write_text)
    assert not r.cached and r["out"] == orphan and store.fsck(stale_after=0)["orphans"] == []


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (t, t), follow_symlinks=False)


def test_fsck_finds_and_removes_stale_tmp_dirs(store):
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )
    mine_dead = _files(store.own_tmp / f"{dead}.0.abc", {"w": b"partial"})
    mine_alive = _files(store.own_tmp / f"{os.getpid()}.{_proc_start(os.getpid())}.abc", {"w": b"running"})
    other_old = _files(store.tmp_dir / "other-host" / "7.99.old", {"w": b"x"})
    other_new = _files(store.tmp_dir / "other-host" / "7.99.new", {"w": b"x"})
    legacy = _files(store.tmp_dir / f"{dead}-{'0' * 32}", {"w": b"x"})
    stray = store.tmp_dir / "other-host" / "stray-file"
    stray.write_text("x")
    _age(stray, 2 * 86400)
    _age(other_old, 2 * 86400)
    _age(legacy, 2 * 86400)
    _age(mine_alive, 2 * 86400)
    res = store.fsck()
    rel = lambda p: p.relative_to(store.home).as_posix()  # noqa: E731
    assert sorted(res["stale_tmp"]) == sorted(map(rel, (mine_dead, other_old, legacy, stray))), res[
        "stale_tmp"
    ]
    assert res["cleaned"] == [] and mine_dead.is_dir()
    res = store.fsck(repair=True)
    assert sorted(res["cleaned"]) == sorted(map(rel, (mine_dead, other_old, legacy, stray)))
    assert not any(p.exists() for p in (mine_dead, other_old, legacy, stray))
    assert mine_alive.is_dir() and other_new.is_dir(), (
        "a live process's or a recently used dir is never removed"
    )
    assert store.fsck()["stale_tmp"] == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fsck_finds_and_removes_stale_scratch_dirs(tmp_path, backend, request):
    home = tmp_path / "home"
    home.mkdir()
    store = Store(home, db_url=_url(backend, home, request))
    done = store.run_step("write", {"text": "done"}, [], _write_text)
    leftover = _files(store.home / "scratch" / done.key[:24], {"ckpt": b"x"})  # killed after the commit
    fresh = _files(
        store.home / "scratch" / ("1" * 24), {"ckpt": b"x"}
    )  # a killed step's checkpoints, this hour
    old = _files(store.home / "scratch" / ("2" * 24), {"ckpt": b"x"})
    _age(old, 2 * 3600)
    rel = lambda p: p.relative_to(store.home).as_posix()  # noqa: E731
    with store.step_lock(done.key, "write"):  # a process running the step (a recompute) holds its lock
        assert store.fsck(repair=True)["stale_scratch"] == [rel(old)]
    assert leftover.is_dir() and fresh.is_dir() and not old.exists()
    res = store.fsck()
    assert res["stale_scratch"] == [rel(leftover)] and leftover.is_dir()
    res = store.fsck(repair=True)
    assert res["cleaned"] == [rel(leftover)] and not leftover.exists() and fresh.is_dir()


# ---- 12: grpo-verifiable keys a user's checker by its source, not its name alone ---------------------------


def _checker_key(store: Store, policy: str, data: str, checker: str | None, monkeypatch) -> tuple[str, dict]:
    """The step key ``grpo_verifiable_step`` asks the store for (the step itself is not run)."""
    from heredity.experiments.self_training import grpo_verifiable_step

    seen = {}

    def capture(op, config, inputs, fn, seed=None):
        seen["key"] = step_key(op, store_mod.config_to_json(config), inputs, seed)
        seen["config"] = config
        return {"model": "unused"}

    with monkeypatch.context() as m:
        m.setattr(store, "run_step", capture)
        grpo_verifiable_step(store, policy, data, checker)
    return seen["key"], seen["config"]


def _checker_module(root: Path, name: str, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(body)
    return root


def _use(monkeypatch, root: Path, *modules: str) -> None:
    for m in modules:
        sys.modules.pop(m, None)
    monkeypatch.syspath_prepend(str(root))


def test_grpo_verifiable_keys_a_user_checker_by_its_source(store, tmp_path, monkeypatch):
    from heredity.data import put_rows
    from heredity.engine.trl_rl import TRLConfig

    def model(ctx):
        (ctx.output("model", "model", "fake") / "config.json").write_text("{}")

    policy = store.run_step("fake-model", {}, [], model)["model"]
    data = put_rows(store, [{"prompt": "1 + 1 =", "answer": 2}], "problems")
    accept = "def check(problem, completion):\n    return True\n"
    reject = "def check(problem, completion):\n    return False\n"
    keys = {}
    for label, body in (("a", accept), ("b", reject), ("c", accept)):
        root = _checker_module(tmp_path / label, "h33_checker", body)
        with monkeypatch.context() as m:
            _use(m, root, "h33_checker")
            keys[label], cfg = _checker_key(store, policy, data, "h33_checker:check", m)
            assert cfg["checker"] == "h33_checker:check" and len(cfg["checker_sha256"]) == 64
    sys.modules.pop("h33_checker", None)
    assert keys["a"] != keys["b"], "the same module:function name with other code is another step"
    assert keys["a"] == keys["c"], "the same source is the same step"
    from heredity.evals.verify import checker_digest

    for spec in (None, "regex:#### {answer}", "heredity.evals.verify:check"):  # keys as they always were
        key, cfg = _checker_key(store, policy, data, spec, monkeypatch)
        old = {"config": TRLConfig().model_dump(), "checker": spec, "stop": []}
        assert cfg == old and key == step_key("grpo-verifiable", old, [policy, data], 0)
        assert checker_digest(spec) is None


def test_checker_digest_follows_a_function_imported_from_another_module(tmp_path, monkeypatch):
    from heredity.errors import HeredityError
    from heredity.evals.verify import checker_digest

    digests = []
    for label, verdict in (("a", "True"), ("b", "False")):
        root = _checker_module(tmp_path / label, "h33_front", "from h33_helper import check\n")
        _checker_module(root, "h33_helper", f"def check(problem, completion):\n    return {verdict}\n")
        with monkeypatch.context() as m:
            _use(m, root, "h33_front", "h33_helper")
            digests.append(checker_digest("h33_front:check"))
    sys.modules.pop("h33_front", None)
    sys.modules.pop("h33_helper", None)
    assert digests[0] != digests[1]
    with pytest.raises(HeredityError, match="cannot import"):
        checker_digest("h33_nonexistent_module:check")
