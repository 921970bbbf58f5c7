import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from heredity.errors import HeredityError
from heredity.store import Store


def _two_step_chain(store: Store, calls: list[str]):
    def make(ctx):
        calls.append("make")
        (ctx.output("dataset", "dataset", "numbers") / "data.txt").write_text("1 2 3\n")
        return {"rows": 1}

    first = store.run_step("make", {"k": 3}, [], make, seed=1)

    def double(ctx):
        calls.append("double")
        src = (store.path(first["dataset"]) / "data.txt").read_text()
        (ctx.output("dataset", "dataset", "doubled") / "data.txt").write_text(src * 2)
        return {"factor": 2}

    return first, store.run_step("double", {"factor": 2}, [first["dataset"]], double)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    if request.param == "sqlite":
        return Store(tmp_path / "home", db_url=f"sqlite:///{tmp_path}/db.sqlite")
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy

    schema_db = f"t{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    with sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT").connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {schema_db}")
    return Store(tmp_path / "home", db_url=url.rsplit("/", 1)[0] + "/" + schema_db)


def test_memoization_and_lineage(any_store):
    calls: list[str] = []
    first, second = _two_step_chain(any_store, calls)
    assert calls == ["make", "double"] and not first.cached and not second.cached
    again_first, again_second = _two_step_chain(any_store, calls)
    assert calls == ["make", "double"], "a rerun must not compute anything"
    assert again_second.cached and again_second.outputs == second.outputs
    lin = any_store.lineage(second["dataset"])
    assert lin["step"]["op"] == "double" and lin["step"]["config"] == {"factor": 2}
    (parent,) = lin["parents"]
    assert parent["id"] == first["dataset"] and parent["step"]["op"] == "make" and parent["step"]["seed"] == 1
    assert parent["parents"] == []
    step = any_store.step_of(second["dataset"])
    assert step.inputs == [first["dataset"]] and "torch" in step.lib_versions and step.host
    assert [c.id for c in any_store.children(first["dataset"])] == [second["dataset"]]


def test_content_addressing_and_prefix(store):
    def write(text):
        def fn(ctx):
            (ctx.output("out", "dataset", "x") / "f").write_text(text)

        return fn

    a = store.run_step("w", {"n": 1}, [], write("same"))["out"]
    b = store.run_step("w", {"n": 2}, [], write("same"))["out"]
    c = store.run_step("w", {"n": 3}, [], write("other"))["out"]
    assert a == b != c
    assert store.resolve_id(a[:8]) == a
    with pytest.raises(HeredityError, match="not an artifact id"):
        store.resolve_id("../etc/passwd")
    with pytest.raises(HeredityError, match="no artifact"):
        store.resolve_id("m-0000000000000000")


def test_failed_step_leaves_nothing(store):
    def boom(ctx):
        (ctx.output("out", "model", "half") / "weights").write_text("partial")
        raise RuntimeError("crash mid-step")

    with pytest.raises(RuntimeError):
        store.run_step("boom", {}, [], boom)
    assert (
        store.list() == []
        and list(store.artifacts_dir.iterdir()) == []
        and not any(p.is_file() for p in store.tmp_dir.rglob("*"))
    )


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from heredity.store import Store
    s = Store(sys.argv[1])
    def make(ctx):
        (ctx.output("dataset", "dataset", "first") / "f").write_text("one")
    first = s.run_step("make", {}, [], make)["dataset"]
    def slow(ctx):
        out = ctx.output("model", "model", "second")
        (out / "weights.bin").write_bytes(b"x" * 1000)
        if sys.argv[2] == "hang":
            Path(sys.argv[1], "started").write_text("1")
            time.sleep(600)
    print(s.run_step("slow", {}, [first], slow)["model"], s.run_step("make", {}, [], make).cached)
    """
)


def test_resume_after_kill(tmp_path):
    home = tmp_path / "home"
    script = tmp_path / "chain.py"
    script.write_text(KILL_SCRIPT)
    p = subprocess.Popen([sys.executable, str(script), str(home), "hang"])
    deadline = time.time() + 60
    while not (home / "started").exists():
        assert time.time() < deadline and p.poll() is None, "the chain never reached its second step"
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    s = Store(home)  # reopening cleans what the killed process left in tmp/
    assert [a.kind for a in s.list()] == ["dataset"], "only the finished first step is visible"
    assert [p for p in s.tmp_dir.rglob("*") if p.is_file()] == [], "nothing the killed process wrote is left"
    r = subprocess.run(
        [sys.executable, str(script), str(home), "finish"], capture_output=True, text=True, check=True
    )
    model_id, first_cached = r.stdout.split()
    assert first_cached == "True", "the rerun must reuse the finished first step"
    assert sorted(a.kind for a in Store(home).list()) == ["dataset", "model"]
    assert (Store(home).path(model_id) / "weights.bin").stat().st_size == 1000


def test_unreachable_database(tmp_path):
    with pytest.raises(HeredityError) as e:
        Store(tmp_path, db_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    msg = str(e.value)
    assert "cannot reach the database" in msg and "HEREDITY_DB_URL" in msg and "\n" not in msg


def test_password_redacted(tmp_path):
    with pytest.raises(HeredityError) as e:
        Store(tmp_path, db_url="postgresql+psycopg://user:secret@127.0.0.1:9/none")
    assert "secret" not in str(e.value)
