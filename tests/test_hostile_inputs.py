"""Hostile files through every importer and loader the CLI offers (tests/data/hostile/, plus a few made here):
each is exactly one line on stderr naming the file (and the line, for line-based files), exit code 2, before
any compute, and the store — its database and its files — is left as it was."""

from __future__ import annotations

import json
import os
import pickle
import re
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE = Path(__file__).parent / "data" / "hostile"
GOOD = str(HOSTILE / "good.jsonl")

# every command that reads a user's file, as a function of that file
IMPORTERS = {
    "data import": lambda f: ["data", "import", f],
    "finetune data": lambda f: ["finetune", "tiny:micro", f, "--max-steps", "1"],
    "insights": lambda f: ["insights", "--input", f],
    "problems": lambda f: ["run", "self-training", "--set", f"problems_file={f}", "--set", 'arms=["rft"]'],
    "prompts": lambda f: ["sample", "tiny:micro", "--file", f, "--max-new-tokens", "1"],
    "finetune config": lambda f: ["finetune", "tiny:micro", GOOD, "--config", f, "--max-steps", "1"],
    "merge config": lambda f: ["merge", f],
    "model": lambda f: ["models", f],
    "finetune model": lambda f: ["finetune", f, GOOD, "--max-steps", "1"],
    "sample model": lambda f: ["sample", f, "hi", "--max-new-tokens", "1"],
    "digits": lambda f: ["run", "subliminal-digits", "--data", f],
    "rerender": lambda f: ["rerender", f],
}
ROWS = ("data import", "finetune data", "problems")
READ = (*ROWS, "insights")
MODEL = ("model", "finetune model", "sample model")
CONFIG = ("finetune config", "merge config")

# (file, importers that must refuse it, what the line must say besides the file's name; ":N:" = names line N)
CASES = [
    (
        "truncated.jsonl",
        READ,
        r":2: not JSON .*cut short|:1: a problem needs",
    ),  # problems: row 1 is no problem
    ("latin1.jsonl", READ, r":1: not UTF-8 text \(byte 0xe9"),
    ("not_objects.jsonl", READ, r":1: a list where a JSON object belongs"),
    ("nan.jsonl", READ, r":1: not JSON \(NaN"),
    ("empty.jsonl", READ, r"has no rows|has no conversations|no train problems"),
    ("blank_lines.jsonl", READ, r"has no rows|has no conversations|no train problems"),
    ("deep.jsonl", READ, r":1: nested too deeply"),
    ("not_parquet.parquet", READ, r"parquet|:1: not JSON"),
    (
        "type_change.jsonl",
        ("data import", "finetune data"),
        r":2: 'prompt' is a number here but text on line 1",
    ),
    (
        "nested_type_change.jsonl",
        ("data import", "finetune data"),
        r":2: 'messages/\[\]/content' is a number here but text on line 1",
    ),
    ("null_completion.jsonl", ("finetune data",), r":2: 'completion' is missing or null"),
    ("missing_completion.jsonl", ("finetune data",), r":3: 'completion' is missing or null"),
    ("number_completion.jsonl", ("finetune data",), r":1: 'completion' is a number, not text"),
    (
        "wrong_columns.jsonl",
        ("finetune data",),
        r"needs column\(s\) prompt, completion but it has question, answer",
    ),
    ("problems_text_answer.jsonl", ("problems",), r":2: 'answer' 'four' is not an integer"),
    ("problems_fraction_answer.jsonl", ("problems",), r":1: 'answer' 1.5 is not an integer"),
    ("problems_no_split.jsonl", ("problems",), r":1: 'split' must be one of"),
    ("latin1.txt", ("prompts",), r":1: not UTF-8 text"),
    ("empty.txt", ("prompts", "merge config"), r"holds no prompts|must hold a mapping"),
    (
        ".",
        ("prompts", "data import", "finetune data", "finetune config", "merge config"),
        r"is not a regular file|does not exist",
    ),
    ("bad.yaml", CONFIG, r":2: not valid YAML"),
    ("list.yaml", CONFIG, r"holds a list at the top, not a mapping"),
    ("scalar.yaml", CONFIG, r"holds a number at the top, not a mapping"),
    ("int_keys.yaml", CONFIG, r"key 1 is not text"),
    ("latin1.yaml", CONFIG, r":1: not UTF-8 text"),
    (
        "unknown_field.yaml",
        CONFIG,
        r":2: no field 'learning_rate'|merge_method: Field required",
    ),  # no typo ignored
    ("bad_value.yaml", ("finetune config",), r":2: lr: Input should be a valid number"),
    ("model_header_too_long", MODEL, r"model.safetensors: header length 1048576 does not fit the file"),
    ("model_header_not_json", MODEL, r"model.safetensors: header is not JSON"),
    ("model_tensor_outside", MODEL, r"model.safetensors: tensor 'w' lies outside the file"),
    ("model_short_file", MODEL, r"model.safetensors: shorter than a safetensors header"),
    ("model_bad_config", MODEL, r"config.json: not JSON"),
    ("model_latin1_config", MODEL, r"config.json: not UTF-8"),
    ("model_index_slip", MODEL, r"weight_map names '\.\./\.\./\.\./secret.safetensors', a path outside"),
    ("model_no_config", MODEL, r"no config.json"),
    ("model_no_config/..", MODEL, r"no config.json"),  # a path through ../ is resolved, and still refused
    ("not_zip.npz", ("digits",), r"not a zip, so not an .npz archive"),
    ("truncated.npz", ("digits",), r"as an npz archive"),
    ("idx_truncated", ("digits",), r"train-images-idx3-ubyte is truncated"),
    ("idx_bad_magic", ("digits",), r"train-images-idx3-ubyte is not an IDX file"),
    ("report_list.json", ("rerender",), r"not a report.json"),
    ("report_incomplete.json", ("rerender",), r"not a complete subliminal-lift report"),
    ("report_latin1.json", ("rerender",), r"cannot read it as a report.json"),
]
MADE = [  # made at test time by `made` below
    ("model_link_out", MODEL, r"link\.json: a link to .*outside the model directory"),
    ("model_link_dir", MODEL, r"loop: a link to a directory"),
    ("model_fifo", MODEL, r"pipe: not a regular file"),
    ("huge_null.jsonl", ("finetune data",), r":5: 'completion' is missing or null"),
    ("object.npz", ("digits",), r"holds pickled objects"),
    ("cifar_evil", ("digits",), r"data_batch_1 .*refused: it names posix.system"),
]


def _made(root: Path) -> None:
    """The hostile inputs that are not committed: links, a FIFO, a big file, pickles."""
    import numpy as np

    def model(name: str) -> Path:
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (d / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
        return d

    (root / "secret.txt").write_text("not yours")
    (model("model_link_out") / "link.json").symlink_to(root / "secret.txt")
    (model("model_link_dir") / "loop").symlink_to(root / "model_link_dir")
    os.mkfifo(model("model_fifo") / "pipe")
    with open(root / "huge_null.jsonl", "w") as f:  # a 2.5 MB row among others, then a null
        for i in range(3):
            f.write(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n")
        f.write(json.dumps({"prompt": "x" * 2_500_000, "completion": "c"}) + "\n")
        f.write(json.dumps({"prompt": "p", "completion": None}) + "\n")
    np.savez(
        root / "object.npz",
        x_train=np.array([{"a": 1}], dtype=object),
        y_train=np.zeros(1),
        x_test=np.zeros((1, 4)),
        y_test=np.zeros(1),
    )
    (root / "cifar_evil").mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        with open(root / "cifar_evil" / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, fh)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    with open(root / "cifar_evil" / "data_batch_1", "wb") as fh:
        pickle.dump(Evil(), fh)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("made")
    _made(root)
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store that already holds something (a dataset), so 'unchanged' is not 'empty'."""
    h = tmp_path_factory.mktemp("hostile-home")
    r = _subprocess(h, "data", "import", GOOD)
    assert r.returncode == 0, r.stderr
    return h


def snapshot(home: Path) -> tuple:
    """Every file under the store (but the database file itself) with its size, and
    every row of every table."""
    files = sorted(
        (p.relative_to(home).as_posix(), p.stat().st_size if p.is_file() else -1)
        for p in home.rglob("*")
        if not p.name.startswith("heredity.db")
    )
    con = sqlite3.connect(home / "heredity.db")
    try:
        names = [
            t for (t,) in con.execute("select name from sqlite_master where type = 'table' order by name")
        ]
        tables = {t: sorted(map(repr, con.execute(f'select * from "{t}"'))) for t in names}
    finally:
        con.close()
    return files, tables


def _in_process(home: Path, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from heredity.cli import main

    monkeypatch.setenv("HEREDITY_HOME", str(home))
    monkeypatch.delenv("HEREDITY_DB_URL", raising=False)
    monkeypatch.setattr(sys, "argv", ["heredity", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # noqa: BLE001 - what a user would see as a traceback
        out = capsys.readouterr()
        pytest.fail(f"heredity {' '.join(args)}: a traceback ({type(e).__name__}: {e}); stderr: {out.err}")
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEREDITY_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("HEREDITY_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "heredity.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def _one_line(code: int, err: str, what: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
        f"{what}: exit {code}, stderr:\n{err}"
    )
    return lines[0]


def _cases():
    for made_here, cases in ((False, CASES), (True, MADE)):
        for name, importers, expect in cases:
            for imp in importers:
                yield pytest.param(made_here, name, imp, expect, id=f"{imp}:{name}")


@pytest.mark.parametrize("made_here,name,importer,expect", list(_cases()))
def test_hostile_file_is_one_line_and_leaves_the_store_alone(
    made_here, name, importer, expect, home, made, monkeypatch, capsys
):
    path = (made if made_here else HOSTILE) / name
    before = snapshot(home)
    code, _, err = _in_process(home, IMPORTERS[importer](str(path)), monkeypatch, capsys)
    line = _one_line(code, err, f"{importer} {name}")
    assert re.search(expect, line), f"{importer} {name}: {line!r} does not say {expect!r}"
    shown = Path(name).name if name not in (".", "model_no_config/..") else HOSTILE.name
    assert shown in line, f"{importer} {name}: the error does not name the file: {line!r}"
    assert snapshot(home) == before, f"{importer} {name} changed the store"
    assert not (made / "PWNED").exists(), "a pickle ran code"


@pytest.mark.parametrize(
    "checker,where",
    [("regex:#### ({answer}", "good_problems.jsonl:1:"), ("regex:[{answer}", "generated train problem 1:")],
)
def test_an_invalid_regex_checker_is_refused_before_any_model_work(checker, where, home, monkeypatch, capsys):
    before = snapshot(home)
    args = ["run", "self-training", "--set", f"checker={checker}"]
    if where.startswith("good"):
        args += ["--set", f"problems_file={HOSTILE / 'good_problems.jsonl'}", "--set", 'arms=["rft"]']
    line = _one_line(*(_in_process(home, args, monkeypatch, capsys)[::2]), checker)
    assert where in line and "not a valid regular expression" in line, line
    assert snapshot(home) == before


def test_a_row_over_one_mib_imports_and_the_file_is_read_once(tmp_path, monkeypatch):
    """pyarrow's JSON reader refuses an object longer than its block ("straddling object"); the import reads
    the file's bytes once (hash, check and table from the same bytes) and never hands pyarrow the path."""
    import pyarrow.json as pj

    from heredity.data import import_dataset
    from heredity.store import Store, read_table

    f = tmp_path / "big.jsonl"
    with open(f, "w") as fh:
        for i in range(3):
            fh.write(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n")
        fh.write(json.dumps({"prompt": "x" * 2_500_000, "completion": "c"}) + "\n")
        fh.write(json.dumps({"prompt": "last", "completion": "c"}) + "\n")
    reads, real_read_bytes, real_read_json = [], Path.read_bytes, pj.read_json

    def read_bytes(self):
        reads.append(str(self))
        return real_read_bytes(self)

    def read_json(src, *a, **kw):
        assert not isinstance(src, (str, Path)), "pyarrow was handed the path: a second read"
        return real_read_json(src, *a, **kw)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(pj, "read_json", read_json)
    store = Store(tmp_path / "h")
    did = import_dataset(store, f)
    assert reads.count(str(f)) == 1, reads
    rows = read_table(store.path(did)).to_pylist()
    assert [r["prompt"][:4] for r in rows] == ["p0", "p1", "p2", "xxxx", "last"] and len(
        rows[3]["prompt"]
    ) == 2_500_000


def test_a_good_file_imports_as_before(tmp_path):
    """The checks change no output: a file's dataset is the parquet of the table pyarrow reads from the file
    (types inferred as before, e.g. timestamps), byte for byte, under the same key."""
    import hashlib

    import pyarrow.json as pj

    from heredity.data import import_dataset
    from heredity.store import Store, write_table
    from heredity.store.tables import DATA_FILE

    f = tmp_path / "typed.jsonl"
    f.write_text(
        '{"a": 1, "t": "2020-01-01", "m": [{"role": "user", "content": "hi"}]}\n\n'
        '{"a": 2.5, "t": null, "m": []}\n'
    )
    store = Store(tmp_path / "h")
    did = import_dataset(store, f)
    (tmp_path / "before").mkdir()
    write_table(tmp_path / "before", pj.read_json(f))  # what the import stored before it read the file once
    assert (store.path(did) / DATA_FILE).read_bytes() == (tmp_path / "before" / DATA_FILE).read_bytes()
    assert store.find_step(store.get(did).step_key).config == {
        "source": "file",
        "path": str(f.resolve()),
        "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
    }


def test_a_dataset_name_with_dots_and_slashes_stays_a_name(home, monkeypatch, capsys):
    """``data import --name ../../x`` names the artifact; nothing is written outside the store's artifacts."""
    code, out, err = _in_process(
        home, ["data", "import", GOOD, "--name", "../../escaped"], monkeypatch, capsys
    )
    assert code == 0, err
    assert not (home.parent / "escaped").exists() and not (home / "escaped").exists()
    assert all(re.fullmatch(r"[mdar]-[0-9a-f]{16}", p.name) for p in (home / "artifacts").iterdir())
    line = _one_line(
        *(_in_process(home, ["data", "import", GOOD, "--name", "a\nb"], monkeypatch, capsys)[::2]), "name"
    )
    assert "control characters" in line


@pytest.mark.parametrize(
    "args",
    [
        ("data", "import", "truncated.jsonl"),
        ("finetune", "tiny:micro", "null_completion.jsonl"),
        ("sample", "tiny:micro", "--file", "latin1.txt"),
        ("finetune", "tiny:micro", "good.jsonl", "--config", "list.yaml"),
        ("models", "model_header_too_long"),
        ("merge", "bad.yaml"),
        ("insights", "--input", "latin1.jsonl"),
        ("run", "self-training", "--set", "problems_file=problems_text_answer.jsonl"),
        ("run", "subliminal-digits", "--data", "not_zip.npz"),
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_as_a_separate_process_the_line_is_all_of_stderr(args, home):
    """The real command: no warning, progress bar or traceback beside the one line."""
    args = [
        a.replace("problems_file=", f"problems_file={HOSTILE}/")
        if a.startswith("problems_file=")
        else str(HOSTILE / a)
        if (HOSTILE / a).exists() and a not in (".",)
        else a
        for a in args
    ]
    before = snapshot(home)
    r = _subprocess(home, *args)
    _one_line(r.returncode, r.stderr, " ".join(args))
    assert snapshot(home) == before


def test_a_real_checkpoint_passes_and_so_does_a_hub_cache_snapshot(tiny, tmp_path):
    """No false alarm: a checkpoint transformers saved, and the Hugging Face cache's layout (each file of a
    snapshot a link to ../../blobs/<sha>) both pass the check."""
    import shutil

    from heredity.models.checkpoint import checkpoint_problem

    store, aid, _, _ = tiny
    assert checkpoint_problem(store.path(aid)) is None
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in sorted(store.path(aid).iterdir()):
        shutil.copy(f, repo / "blobs" / f.name)
        (snap / f.name).symlink_to(Path("../../blobs") / f.name)
    assert checkpoint_problem(snap) is None


def test_the_net_under_the_checks_is_one_line_too():
    from heredity.cli import _input_error

    assert _input_error(PermissionError(13, "Permission denied", "/data/x.jsonl")) == (
        "/data/x.jsonl: Permission denied; check the path and its permissions"
    )
    assert "free some disk space" in _input_error(OSError(28, "No space left on device", "/h/artifacts/x"))
    assert "not UTF-8" in _input_error(UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid"))
    assert (
        _input_error(RuntimeError("a bug")) is None
        and _input_error(ConnectionRefusedError(111, "refused")) is None
    )
