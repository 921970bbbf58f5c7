import gzip
import json
import struct

import numpy as np
import pytest
import torch

from heredity.data.digits import load_digit_arrays, read_idx
from heredity.errors import HeredityError
from heredity.experiments import subliminal_digits as sd


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )


def _mnist_like(rng, n):
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader_reads_generated_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    (xtr, ytr), (xte, yte) = _mnist_like(rng, 12), _mnist_like(rng, 5)
    for name, a in [
        ("train-images-idx3-ubyte", xtr),
        ("train-labels-idx1-ubyte", ytr),
        ("t10k-images-idx3-ubyte", xte),
        ("t10k-labels-idx1-ubyte", yte),
    ]:
        data = _idx(a)
        if gz:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    d = load_digit_arrays(str(tmp_path))
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (5, 784) and d.scale == 255.0
    assert np.array_equal(d.x_train, xtr.reshape(12, -1)) and np.array_equal(d.y_test, yte.astype(np.int64))
    x = d.normalized("train")
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_npz_loader_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(1)
    (xtr, ytr), (xte, yte) = _mnist_like(rng, 7), _mnist_like(rng, 3)
    np.savez(tmp_path / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    d = load_digit_arrays(str(tmp_path / "mnist.npz"))
    assert np.array_equal(d.x_test, xte.reshape(3, -1))
    np.savez(tmp_path / "partial.npz", x_train=xtr)
    with pytest.raises(HeredityError, match="lacks y_train, x_test, y_test"):
        load_digit_arrays(str(tmp_path / "partial.npz"))
    with pytest.raises(HeredityError, match="does not exist"):
        load_digit_arrays(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeredityError, match="no train-images-idx3-ubyte"):
        load_digit_arrays(str(tmp_path / "empty"))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(HeredityError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx(xtr)[:-10])
    with pytest.raises(HeredityError, match="truncated"):
        read_idx(tmp_path / "short")


def test_stacked_training_equals_one_model_at_a_time():
    """Vectorized seeds are independent: training two stacked MLPs equals training each alone."""
    cfg = sd.Config(seeds=2, hidden=16, teacher_epochs=2, teacher_batch=8)
    x, y = torch.rand(40, 6) * 2 - 1, torch.randint(0, 10, (40,))
    both = sd.train_teachers(sd.init_mlps(2, [6, 16, 16, 13], seed=3), x, y, cfg, progress=False)
    for i in range(2):
        alone = sd.train_teachers(
            [p[i : i + 1] for p in sd.init_mlps(2, [6, 16, 16, 13], seed=3)], x, y, cfg, progress=False
        )
        for a, b in zip(alone, both, strict=True):
            torch.testing.assert_close(a[0], b[i], rtol=1e-4, atol=1e-5)


def test_aux_student_never_sees_class_logits_or_digits():
    torch.manual_seed(0)
    digits = torch.from_numpy(load_digit_arrays("digits").normalized("train"))
    sizes = [64, 32, 32, 13]
    teacher = sd.init_mlps(1, sizes, seed=1)
    student0 = sd.init_mlps(1, sizes, seed=1)
    seen_inputs, seen_widths = [], []

    def spy(noise):
        seen_inputs.append(noise.clone())
        target = sd.mlp_forward(teacher, noise)[..., 10:]
        seen_widths.append(target.shape[-1])
        return target

    aux = slice(10, 13)
    student = sd.distill(student0, spy, aux, in_dim=64, steps=20, batch=16, lr=1e-2, seed=0, progress=False)
    # the targets were auxiliary logits only, computed on noise
    assert seen_widths == [3] * 20
    for x in seen_inputs:
        assert x.shape == (16, 64) and x.min() >= -1 and x.max() <= 1
        # uniform noise is not a digit: digit pixels sit on a 17-level grid, noise does not
        assert not torch.isclose(x.unsqueeze(1), digits[:200].unsqueeze(0)).all(-1).any()
    # no gradient ever reached the class-logit head: its weights and biases are bit-identical
    w_last, b_last = student[2], student[5]
    assert torch.equal(w_last[..., :10], student0[2][..., :10]) and torch.equal(
        b_last[..., :10], student0[5][..., :10]
    )
    # while the shared layers and the aux head did learn
    assert not torch.equal(student[0], student0[0]) and not torch.equal(
        w_last[..., 10:], student0[2][..., 10:]
    )


def test_quick_digits_run_meets_its_bar(store):
    """The README's first experiment: 25 seeds on digits; same-init >= 0.35, other-init
    <= 0.15, disjoint CIs."""
    cfg = sd.Config.presets()["quick"]
    res = sd.run(store, cfg, progress=False)
    report = json.loads((store.path(res["report"]) / "report.json").read_text())
    same, other = report["arms"]["student same-init aux"], report["arms"]["student other-init aux"]
    assert same["n"] == 25 and other["n"] == 25
    assert same["mean"] >= 0.35 and other["mean"] <= 0.15
    assert same["lo"] > other["hi"] and report["intervals_disjoint"]
    assert report["arms"]["teacher"]["mean"] > 0.9
    assert (store.path(res["report"]) / "plot.png").stat().st_size > 10_000
    assert report["data"] in report["artifacts"]
    assert store.lineage(res["report"])["parents"][0]["id"] == report["data"]
    again = sd.run(store, cfg, progress=False)
    assert again["cached"] and again["report"] == res["report"]


def test_sweep_runs_one_memoized_point_per_setting(store):
    """Each sweep point is its own subliminal-digits step with one setting changed; p-values Holm-adjusted
    over all points; a rerun computes nothing."""
    from heredity.experiments import digits_sweep, subliminal_digits
    from heredity.reports.stats import holm

    base = subliminal_digits.Config(seeds=3, hidden=32, teacher_epochs=2, student_steps=30, student_batch=32)
    cfg = digits_sweep.Config(base=base, axes={"aux": [1, 3], "hidden": [16]})
    out = digits_sweep.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    pts = rep["points"]
    assert [(p["axis"], p["value"]) for p in pts] == [("aux", 1), ("aux", 3), ("hidden", 16)]
    assert len({p["report"] for p in pts}) == 3
    assert [p["p_holm"] for p in pts] == holm([p["test"]["p"] for p in pts])  # three distinct runs here
    assert rep["runs"] == 3 and all(p["min_detectable"] > 0 for p in pts)
    assert all(p["test"]["unit"].startswith("training seeds") and p["test"]["n"] == 3 for p in pts)
    assert "| auxiliary logits m | 1 |" in out["markdown"] and "unit: training seeds, n = 3" in out["outcome"]
    assert digits_sweep.run(store, cfg, progress=False)["report"] == out["report"]
    with pytest.raises(HeredityError, match="unknown sweep axis"):
        digits_sweep.run(store, digits_sweep.Config(base=base, axes={"depth": [2]}), progress=False)
