import json
import os
import subprocess
import sys

import pytest

HEREDITY = [sys.executable, "-m", "heredity.cli"]


def cli(home, *args, env=None):
    e = {**os.environ, "HEREDITY_HOME": str(home), **(env or {})}
    e.pop("HEREDITY_DB_URL", None) if "HEREDITY_DB_URL" not in (env or {}) else None
    return subprocess.run([*HEREDITY, *args], capture_output=True, text=True, env=e, timeout=600)


def one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_finetune_and_lineage_tiny(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"say {i}", "completion": str(i)}) for i in range(8)))
    r = cli(tmp_path / "h", "finetune", "tiny:micro", str(data), "--max-steps", "3", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    aid = r.stdout.split()[1]
    assert aid.startswith("a-")
    tree = cli(tmp_path / "h", "lineage", aid)
    assert tree.returncode == 0
    for needle in ("finetune", "init-tiny", "import-dataset", "train", "max_steps=3"):
        assert needle in tree.stdout, needle
    mer = cli(tmp_path / "h", "lineage", aid, "--format", "mermaid").stdout
    assert mer.startswith("graph TD") and "-->|finetune|" in mer
    again = cli(tmp_path / "h", "finetune", "tiny:micro", str(data), "--max-steps", "3", "--batch-size", "4")
    assert again.stdout.startswith("cached") and aid in again.stdout


def test_bad_inputs_one_line(tmp_path):
    h = tmp_path / "h"
    assert "does not exist" in one_line_error(
        cli(h, "finetune", "tiny:micro", str(tmp_path / "missing.jsonl"))
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert "cannot read dataset" in one_line_error(cli(h, "finetune", "tiny:micro", str(bad)))
    assert "not an artifact id" in one_line_error(cli(h, "show", "../../etc"))
    assert "cannot resolve model spec" in one_line_error(cli(h, "models", "no such model!"))
    assert "unknown experiment" in one_line_error(cli(h, "run", "nope"))
    err = one_line_error(cli(h, "ls", env={"HEREDITY_DB_URL": "postgresql+psycopg://u:pw@127.0.0.1:9/db"}))
    assert "cannot reach the database" in err and "pw" not in err
    assert "invalid config" in one_line_error(cli(h, "finetune", "tiny:micro", str(bad), "--lr", "-1"))
    assert list((h / "artifacts").iterdir()) == [], "nothing may be written by failed commands"


def test_help_has_examples(tmp_path):
    for cmd in ("sample", "finetune", "lineage", "run"):
        r = cli(tmp_path, cmd, "--help")
        assert r.returncode == 0 and "Example" in r.stdout, cmd


@pytest.mark.slow
def test_lineage_of_smollm2_finetune_shows_gguf_origin(shared_store, tmp_path):
    data = tmp_path / "owls.jsonl"
    data.write_text(
        "\n".join(json.dumps({"prompt": "Your favourite animal?", "completion": "Owl."}) for _ in range(4))
    )
    r = cli(
        shared_store.home,
        "finetune",
        "smollm2-135m-instruct",
        str(data),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
    )
    assert r.returncode == 0, r.stderr
    aid = r.stdout.split()[1]
    node = json.loads(cli(shared_store.home, "lineage", aid, "--format", "json").stdout)
    assert (
        node["kind"] == "adapter"
        and node["step"]["op"] == "finetune"
        and node["step"]["config"]["lora_r"] == 8
    )
    base, dataset = node["parents"]
    assert base["step"]["op"] == "convert-gguf" and base["meta"]["origin"].endswith(".gguf")
    assert dataset["kind"] == "dataset" and dataset["step"]["op"] == "import-dataset"


def test_run_errors_are_one_line(tmp_path):
    msg = one_line_error(cli(tmp_path / "h", "run", "subliminal-digits", "--data", str(tmp_path / "missing")))
    assert "does not exist" in msg and "MNIST IDX directory" in msg
    assert "takes no --data" in one_line_error(cli(tmp_path / "h", "run", "smoke", "--data", "x"))
    assert "no config field" in one_line_error(
        cli(tmp_path / "h", "run", "subliminal-numbers", "--set", "animals=owl")
    )
    assert "teacher" in one_line_error(
        cli(tmp_path / "h", "run", "subliminal-numbers", "--set", "teacher=weights")
    )
    assert "must differ" in one_line_error(
        cli(tmp_path / "h", "run", "subliminal-numbers", "--set", "other_animal=owl")
    )
    assert "animal" in one_line_error(
        cli(tmp_path / "h", "run", "subliminal-numbers", "--set", "animal=Owl!")
    )
    listing = cli(tmp_path / "h", "run", "--list")
    assert (
        listing.returncode == 0
        and "subliminal-digits" in listing.stdout
        and "subliminal-numbers" in listing.stdout
    )
    assert not list((tmp_path / "h" / "artifacts").iterdir())  # nothing half-written


def test_killed_cli_finetune_resumes_from_its_checkpoint(tmp_path):
    """kill -9 mid-run, rerun the same command: it continues from the last checkpoint (saved by default), and
    the result equals an uninterrupted run's."""
    import signal
    import time

    data = tmp_path / "train.jsonl"
    data.write_text(
        "\n".join(json.dumps({"prompt": f"say {i}", "completion": str(i) * 40}) for i in range(32))
    )
    args = (
        "finetune",
        "tiny:micro",
        str(data),
        "--max-steps",
        "300",
        "--batch-size",
        "8",
        "--method",
        "full",
    )
    home = tmp_path / "h"
    e = {**os.environ, "HEREDITY_HOME": str(home)}
    e.pop("HEREDITY_DB_URL", None)
    p = subprocess.Popen([*HEREDITY, *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list(home.glob("scratch/*/state.pt")):
        assert p.poll() is None and time.time() < deadline, "no checkpoint was written before the run ended"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = cli(home, *args)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())  # the console wraps long lines (a fast run prints a longer tokens/s)
    assert "resumed from the checkpoint at step" in out, r.stdout
    step = int(out.split("resumed from the checkpoint at step")[1].split(")")[0])
    assert 0 < step < 300
    fresh = cli(tmp_path / "h2", *args, "--save-every", "0")
    assert fresh.returncode == 0 and "resumed" not in fresh.stdout
    assert r.stdout.split()[1] == fresh.stdout.split()[1], (
        "the resumed run stores the same model as an uninterrupted one"
    )


def test_a_bad_beir_corpus_stops_synthetic_embeddings_before_any_compute(tmp_path):
    """A user's BEIR corpus with an unknown id in its qrels: one line naming the file, the line and the fix,
    exit 2, and nothing stored (the writer never ran)."""
    beir = tmp_path / "mine"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    home = tmp_path / "home"
    r = cli(home, "run", "synthetic-embeddings", "--set", f'beir=["{beir}"]')
    one_line_error(r)
    assert "test.tsv:2" in r.stderr and "'d9' is not in corpus.jsonl" in r.stderr
    assert not (home / "artifacts").exists() or not any((home / "artifacts").iterdir())


def test_a_presets_fields_left_out_of_step_keys_survive_the_cli_round_trip():
    """`heredity run` dumps a preset and validates it back; fields marked exclude=True (a fine-tune's piece
    size, its checkpoint interval) are absent from a plain dump and used to fall back to their defaults."""
    from heredity.cli import preset_with_sets
    from heredity.experiments import data_quality as dq

    quick = dq.Config.presets()["quick"]
    first, *rest = quick.bases
    pieces = first.train.model_copy(update={"micro_batch_tokens": 192, "save_every": 0})
    preset = quick.model_copy(update={"bases": [first.model_copy(update={"train": pieces}), *rest]})
    assert "micro_batch_tokens" not in preset.model_dump()["bases"][0]["train"]  # what the old path lost
    cfg = dq.Config.model_validate(preset_with_sets(dq.Config, preset, [], "data-quality"))
    assert (cfg.bases[0].train.micro_batch_tokens, cfg.bases[0].train.save_every) == (192, 0)
    assert [b.train.micro_batch_tokens for b in cfg.bases[1:]] == [b.train.micro_batch_tokens for b in rest]
    assert cfg == preset  # nothing else moved

    from heredity.experiments import chatgpt

    sets = ["sft.micro_batch_tokens=96"]  # --set reaches an excluded field of a nested config too
    got = chatgpt.Config.model_validate(preset_with_sets(chatgpt.Config, chatgpt.Config(), sets, "chatgpt"))
    assert got.sft.micro_batch_tokens == 96 and chatgpt.Config().sft.micro_batch_tokens is None
