"""The store knows its bytes: corruption is caught on load and by fsck; lineage under
deduplication; shared stores."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from heredity.errors import HeredityError
from heredity.store import Store
from heredity.store.store import CorruptArtifactError, _proc_start


def _weights_step(store: Store, value: float = 1.0, op: str = "make-weights", cfg: dict | None = None) -> str:
    def make(ctx):
        out = ctx.output("adapter", "adapter", "w")
        save_file({"w": np.full((64, 64), value, dtype=np.float32)}, str(out / "adapter_model.safetensors"))
        (out / "adapter_config.json").write_text("{}")

    return store.run_step(op, cfg if cfg is not None else {"value": value}, [], make)["adapter"]


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HEREDITY_DB_URL"}
    env["HEREDITY_HOME"] = str(home)
    exe = Path(sys.executable).parent / "heredity"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def test_flipped_byte_is_caught_on_load_and_by_fsck(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    aid = _weights_step(store)
    f = store.artifacts_dir / aid / "adapter_model.safetensors"
    store.get(aid)  # first load after the write: a full hash, which matches
    _flip_byte(f, f.stat().st_size - 5)  # inside a tensor: the header stays well formed
    with pytest.raises(
        CorruptArtifactError, match=rf"artifact {aid} is corrupt: .*hash.*heredity fsck {aid}"
    ):
        Store(home).get(aid)
    r = _cli(home, "show", aid)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and f"heredity fsck {aid}" in r.stderr, r.stderr
    r = _cli(home, "fsck")
    assert r.returncode == 1 and f"{aid}: its files hash to" in r.stdout and "1 broken" in r.stdout, r.stdout


def test_damaged_header_is_one_line(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    aid = _weights_step(store)
    f = store.artifacts_dir / aid / "adapter_model.safetensors"
    _flip_byte(f, 10)  # inside the JSON header
    r = _cli(home, "show", aid)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert (
        "\n" not in line and aid in line and "adapter_model.safetensors" in line and "heredity fsck" in line
    ), line


def test_fsck_reports_missing_files_and_repair_recomputes(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    good, bad = _weights_step(store, 1.0), _weights_step(store, 2.0)
    (store.artifacts_dir / bad / "adapter_config.json").unlink()
    (store.artifacts_dir / good / "extra.txt").write_text("not stored")
    res = store.fsck()
    assert res["checked"] == 2
    assert res["broken"] == {
        bad: ["adapter_config.json: missing"],
        good: ["extra.txt: not part of the stored artifact"],
    }
    (store.artifacts_dir / good / "extra.txt").unlink()
    r = _cli(home, "fsck", bad, "--repair")
    assert r.returncode == 1 and f"removed {bad}" in r.stdout and "make-weights (step" in r.stdout, r.stdout
    assert not (store.artifacts_dir / bad).exists() and (store.artifacts_dir / good).is_dir()
    again = Store(home)
    assert _weights_step(again, 2.0) == bad, "the step recomputes the removed artifact under the same id"
    assert again.fsck()["broken"] == {} and again.get(bad)


def test_verify_env_rehashes_even_when_metadata_matches(tmp_path, monkeypatch):
    home = tmp_path / "home"
    store = Store(home)
    aid = _weights_step(store)
    store.get(aid)
    f = store.artifacts_dir / aid / "adapter_model.safetensors"
    st = f.stat()
    _flip_byte(f, st.st_size - 5)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: the cheap check cannot see it
    assert Store(home).get(aid)
    monkeypatch.setenv("HEREDITY_VERIFY", "1")
    with pytest.raises(CorruptArtifactError):
        Store(home).get(aid)


def test_lineage_follows_the_step_on_the_traced_path(tmp_path):
    store = Store(tmp_path / "home")
    a = _weights_step(store, 3.0, op="make-weights", cfg={"value": 3.0, "recipe": "A"})
    b = _weights_step(store, 3.0, op="make-weights", cfg={"value": 3.0, "recipe": "B"})
    assert a == b, "identical bytes: one artifact"
    assert [st.config["recipe"] for st in store.producers(a)] == ["A", "B"]

    def child(tag):
        def fn(ctx):
            (ctx.output("dataset", "dataset", f"from-{tag}") / "x.txt").write_text(tag)

        return fn

    # a fresh process traces chain B: the consuming step records the producer it was handed
    store2 = Store(tmp_path / "home")
    _weights_step(store2, 3.0, op="make-weights", cfg={"value": 3.0, "recipe": "B"})
    out_b = store2.run_step("consume", {"tag": "B"}, [b], child("B"))["dataset"]
    store3 = Store(tmp_path / "home")
    _weights_step(store3, 3.0, op="make-weights", cfg={"value": 3.0, "recipe": "A"})
    out_a = store3.run_step("consume", {"tag": "A"}, [a], child("A"))["dataset"]
    lin_b = Store(tmp_path / "home").lineage(out_b)
    assert lin_b["parents"][0]["step"]["config"]["recipe"] == "B"
    assert [o["op"] for o in lin_b["parents"][0]["also_made_by"]] == ["make-weights"]
    assert Store(tmp_path / "home").lineage(out_a)["parents"][0]["step"]["config"]["recipe"] == "A"
    key_a = store.producers(a)[0].key
    assert Store(tmp_path / "home").lineage(a, step=key_a[:10])["step"]["config"]["recipe"] == "A"
    with pytest.raises(HeredityError, match="no step"):
        store.lineage(a, step="ffffffff")


def test_tmp_cleaning_spares_other_hosts_and_live_processes(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    other = store.tmp_dir / "some-other-host" / "1.123.abc"
    other.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    mine_dead = store.own_tmp / f"{dead_pid}.0.abc"
    mine_alive = store.own_tmp / f"{os.getpid()}.{_proc_start(os.getpid())}.abc"
    reused = store.own_tmp / f"{os.getpid()}.1.abc"  # this PID, but a process that started at another time
    for d in (mine_dead, mine_alive, reused):
        d.mkdir(parents=True)
    Store(home)
    assert other.is_dir(), "another host's running output must survive"
    assert mine_alive.is_dir() and not mine_dead.exists() and not reused.exists()
    assert (
        store.own_tmp.parent == store.tmp_dir and socket.gethostname().replace(" ", "_") in store.own_tmp.name
    )


CONCURRENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from heredity.store import Store
    home, url, log = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    s = Store(home, db_url=url)
    def slow(ctx):
        with open(log, "a") as fh:
            fh.write("computed\\n")
        out = ctx.output("model", "model", "m")
        (ctx.scratch / "ckpt").write_text("partial")
        time.sleep(3)
        (out / "w.bin").write_bytes(b"x" * 100)
    Path(home, f"ready-{sys.argv[4]}").write_text("1")
    while not all(Path(home, f"ready-{i}").exists() for i in "01"):
        time.sleep(0.01)
    r = s.run_step("slow", {}, [], slow)
    print(r["model"], r.cached)
    """
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_one_step_compute_once(tmp_path, backend, request):
    home = tmp_path / "home"
    home.mkdir()
    if backend == "sqlite":
        url = f"sqlite:///{home / 'heredity.db'}"
    else:
        import sqlalchemy

        base = request.getfixturevalue("postgres_url")
        db = f"conc{os.getpid()}"
        with sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT").connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {db}")
            c.exec_driver_sql(f"CREATE DATABASE {db}")
        url = base.rsplit("/", 1)[0] + "/" + db
    Store(home, db_url=url)  # create the tables once
    script = tmp_path / "conc.py"
    script.write_text(CONCURRENT)
    log = tmp_path / "log"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(home), url, str(log), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    results = sorted(o[0].split() for o in outs)
    assert log.read_text() == "computed\n", "exactly one process computes the step"
    assert results[0][0] == results[1][0] and sorted(r[1] for r in results) == ["False", "True"]
    assert any("being computed by another process" in o[1] for o in outs)


def test_ls_never_cuts_an_id(tmp_path):
    home = tmp_path / "home"
    store = Store(home)

    def make(ctx):
        (ctx.output("dataset", "dataset", "a-very-long-dataset-name-" * 4) / "x.txt").write_text("x")

    aid = store.run_step("make", {}, [], make)["dataset"]
    env_cols = {"COLUMNS": "80"}
    os.environ.update(env_cols)
    try:
        r = _cli(home, "ls")
    finally:
        os.environ.pop("COLUMNS")
    assert r.returncode == 0 and aid in r.stdout, r.stdout
    assert _cli(home, "ls", "--format", "plain").stdout.split("\t")[0] == aid
    assert '"id": "' + aid in _cli(home, "ls", "--format", "json").stdout
    assert _cli(home, "ls", "--format", "yaml").returncode == 2
