"""Data attacks and uncertainty: poisoning changes exactly the stated rows; ART's FGSM is the hand-computed
step; the uncertainty scores and metrics on constructed inputs with known answers; the sibling arm shares its
initialization; a poisoned model's lineage shows the attack; the experiment runs end to end and a rerun
computes nothing."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from heredity.data import poison
from heredity.evals import uncertainty as U


def _data(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, (n, d)), rng.integers(0, 10, n)


def test_label_flips_change_exactly_the_stated_rows_and_never_keep_the_label():
    x, y = _data()
    x2, y2, rows = poison.label_flip(x, y, 0.2, 10, seed=3)
    assert len(rows) == 40 and len(set(rows)) == 40
    assert (np.flatnonzero(y2 != y) == rows).all(), "every chosen row changes label, no other row does"
    assert (x2 == x).all()
    again = poison.label_flip(x, y, 0.2, 10, seed=3)
    assert (again[1] == y2).all() and (poison.label_flip(x, y, 0.2, 10, seed=4)[2] != rows).any()


def test_the_targeted_flip_relabels_only_a_share_of_the_source_class():
    x, y = _data()
    _, y2, rows = poison.targeted_flip(x, y, 7, 1, 0.5, seed=0)
    sevens = np.flatnonzero(y == 7)
    assert len(rows) == round(0.5 * len(sevens)) and set(rows) <= set(sevens)
    assert (np.flatnonzero(y2 != y) == rows).all() and (y2[rows] == 1).all()


def test_the_trigger_stamps_only_its_pixels_on_only_the_counted_rows():
    x, y = _data(d=64)
    x2, y2, rows = poison.badnets(x, y, 25, target=0, size=2, value=16, seed=1)
    assert len(rows) == 25 and (y[rows] != 0).all(), "poisons come from the other classes"
    assert (y2[rows] == 0).all() and (np.flatnonzero(y2 != y) == rows).all()
    corner = poison.trigger_pixels(8, 2)
    assert sorted(corner) == [54, 55, 62, 63]  # the bottom-right 2x2 of an 8x8 image
    changed = np.argwhere(x2 != x)
    assert set(changed[:, 0]) <= set(rows) and set(changed[:, 1]) <= set(corner)
    assert (x2[np.ix_(rows, corner)] == 16).all()
    others = np.setdiff1d(np.arange(len(x)), rows)
    assert (x2[others] == x[others]).all()
    with pytest.raises(ValueError, match="badnets count must be"):
        poison.badnets(x, y, 10_000, target=0, size=2, value=16, seed=1)


def test_art_fgsm_is_the_hand_computed_signed_gradient_step_on_a_two_layer_model():
    from heredity.evals.adversarial import classifier, fgsm
    from heredity.experiments import data_attacks as X
    from heredity.experiments.subliminal_digits import init_mlps

    params = init_mlps(2, [16, 8, 4], seed=0)  # two stacked 2-layer MLPs
    m = X.member(params, 1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 16)).astype(np.float32)
    y = rng.integers(0, 4, 32)
    xt = torch.tensor(x, requires_grad=True)
    logits = (
        torch.relu(xt @ params[0][1] + params[2][1]) @ params[1][1] + params[3][1]
    )  # by hand, from the stack
    assert torch.allclose(logits, m(xt), atol=1e-6), "member() is stacked model 1"
    torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
    want = np.clip(x + 0.2 * np.sign(xt.grad.numpy()), -1, 1)
    got = fgsm(classifier(m, 16, 4, (-1.0, 1.0)), x, y, 0.2)
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(got - x).max() <= 0.2 + 1e-6


def test_uncertainty_scores_on_constructed_logits():
    probs = np.array(
        [[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [[0.3, 0.6, 0.1], [0.1, 0.6, 0.3]]]
    )  # 2 members, 2 inputs
    ens = U.ensemble_probs(probs)
    assert np.allclose(ens, [[0.5, 0.4, 0.1], [0.1, 0.7, 0.2]]) and np.allclose(U.msp(ens), [0.5, 0.7])
    assert U.mc_dropout_probs is U.ensemble_probs or np.allclose(U.mc_dropout_probs(probs), ens)
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (20000, 5))
    y = np.array([rng.choice(5, p=p) for p in U.softmax(z, 2.0)])  # labels drawn at temperature 2
    assert abs(U.fit_temperature(z, y) - 2.0) < 0.1
    assert abs(U.nll(U.softmax(z, 2.0), y) - U.nll(U.softmax(z, U.fit_temperature(z, y)), y)) < 1e-3


def test_auroc_fpr_and_ece_against_known_values_and_scikit_learn():
    from sklearn.metrics import roc_auc_score

    assert U.auroc(np.array([0.9, 0.8]), np.array([0.85, 0.1])) == 0.75  # 3 of 4 pairs ranked right
    assert U.auroc(np.array([0.9, 0.95]), np.array([0.1, 0.2])) == 1.0
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    assert U.auroc(a, b) == pytest.approx(roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[a, b]))
    ins, outs = np.linspace(0.01, 1, 100), np.linspace(0, 1, 11)  # the 95% threshold keeps ins >= 0.06
    assert U.fpr_at_tpr(ins, outs) == pytest.approx(10 / 11)
    # confidence 0.8 everywhere and right 80% of the time: calibrated; confidence 1 and
    # right half the time: 0.5
    p = np.tile([0.8, 0.2], (10, 1))
    assert U.ece(p, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0)
    assert U.ece(np.tile([1.0, 0.0], (10, 1)), np.array([0] * 5 + [1] * 5)) == pytest.approx(0.5)
    assert U.nll(p, np.zeros(10, int)) == pytest.approx(-np.log(0.8))


def test_the_experiment_end_to_end_siblings_lineage_and_rerun(tmp_path):
    from heredity.experiments import data_attacks as X
    from heredity.experiments.subliminal_digits import init_mlps
    from heredity.store import Store

    store = Store(tmp_path / "h")
    cfg = X.Config(
        seeds=2,
        epochs=2,
        hidden=32,
        widths=[16, 32],
        counts=[0, 50],
        flip_rates=[0.0, 0.2],
        eps=[0.0, 0.1],
        train_eps=0.1,
        flag_eps=0.1,
        flag_count=50,
        pgd_steps=2,
        ensembles=2,
        ensemble_size=2,
        mc_passes=3,
        angles=[0, 45],
        noise_images=20,
    )
    out = X.run(store, cfg, progress=False)
    rep = json.loads((store.path(out["report"]) / "report.json").read_text())
    sib = {k: store.step_of(v).config for k, v in rep["adversarial"]["siblings"].items()}
    assert sib["A"]["init_seed"] == sib["B"]["init_seed"] != sib["C"]["init_seed"], (
        "B shares A's initialization, C does not"
    )
    assert sib["A"]["order_seed"] != sib["B"]["order_seed"] == sib["C"]["order_seed"], (
        "B and C differ only in the init"
    )
    assert {k: v for k, v in sib["B"].items() if k != "init_seed"} == {
        k: v for k, v in sib["C"].items() if k != "init_seed"
    }
    same = init_mlps(2, [64, 32, 32, 10], seed=sib["A"]["init_seed"])
    assert not torch.equal(same[0], init_mlps(2, [64, 32, 32, 10], seed=sib["C"]["init_seed"])[0])
    b = next(x for x in rep["poisoning"]["badnets"] if x["count"] == 50 and x["width"] == 32)
    assert "'op': 'poison-digits'" in str(store.lineage(b["model"])) and "'count': 50" in str(
        store.lineage(b["model"])
    )
    chain = store.step_of(b["model"])
    data_step = store.step_of(chain.inputs[0])
    assert (
        data_step.op == "poison-digits"
        and data_step.config["attack"] == "badnets"
        and data_step.config["count"] == 50
    )
    assert store.get(chain.inputs[0]).meta["poisoned_rows"] == 50
    assert 0 <= b["attack_success"]["lo"] <= b["attack_success"]["mean"] <= b["attack_success"]["hi"] <= 1
    assert rep["families"] == X.families(cfg), "the families are declared from the config alone"
    assert {f: [c["id"] for c in rep["comparisons"] if c["family"] == f] for f in rep["families"]} == rep[
        "families"
    ], "the report tests exactly the declared Holm families"
    assert set(rep["families"]) == {X.TRAINING, X.MODELS}
    assert all(c["p_holm"] >= c["test"]["p"] for c in rep["comparisons"] if c["test"]["p"] == c["test"]["p"])
    _paired_arms(rep)
    assert "## 3. Uncertainty" in out["markdown"] and "Beside the published figures" in out["markdown"]
    n_artifacts = len(store.list())
    again = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in rep.items() if k != "seconds"
    }
    assert len(store.list()) == n_artifacts + 1, (
        "a rerun computes nothing but a new card (its run time differs)"
    )


def test_the_confidence_score_ranks_as_max_softmax_without_saturating():
    z = np.array([[30.0, 0.0, 0.0], [40.0, 0.0, 0.0], [1.0, 0.5, 0.0], [2.0, 0.0, 0.0]])
    p = U.softmax(z, 0.05)
    assert U.msp(p)[0] == U.msp(p)[1] == 1.0, "at a small temperature the top probability rounds to 1"
    c = U.confidence(p)
    assert c[1] > c[0] > c[3] > c[2], "the score still orders them"
    q = U.softmax(z)
    assert (np.argsort(U.confidence(q)) == np.argsort(U.msp(q))).all()


def _paired_arms(rep):
    """The uncertainty contrasts compare arms that differ in one thing, paired: an ensemble with its own
    members, MC dropout with the same dropout models in one pass, temperature scaling with the
    same models unscaled."""
    from heredity.experiments import data_attacks as X

    U = rep["uncertainty"]
    rows = {c["id"]: c for c in rep["comparisons"]}
    for s in X.OOD_SETS:
        ens = rows[f"ood/{s}/ensemble"]["test"]
        assert ens["test"] == "paired t" and ens["unit"].startswith("ensembles"), (
            "never Welch: the same models"
        )
        members = U["members_auroc"][s]["per_ensemble"]
        assert ens["mean_b"] == pytest.approx(np.mean(members)) and ens["n"] == len(members)
        assert (
            len(U["members_auroc"][s]["per_model"])
            == rep["config"]["ensembles"] * rep["config"]["ensemble_size"]
        )
        mc = rows[f"ood/{s}/mc"]["test"]
        assert mc["test"] == "paired t" and mc["mean_b"] == pytest.approx(
            U["ood"][s][X.DROPOUT_ONE_PASS]["auroc"]["mean"]
        )
        assert mc["mean_a"] == pytest.approx(U["ood"][s]["MC dropout"]["auroc"]["mean"])
        assert rows[f"ood/{s}/temperature"]["test"]["test"] == "paired t"
    assert X.DROPOUT_ONE_PASS in U["in_distribution"], (
        "the arm that differs from MC dropout in inference only"
    )


def test_a_rate_equal_on_every_seed_is_never_pooled_over_seeds():
    from heredity.experiments import data_attacks as X
    from heredity.reports.stats import rate_ci, rate_diff_test

    hit, none = X.seed_rate([331] * 5, [331] * 5), X.seed_rate([0] * 5, [331] * 5)
    assert hit["lo"] < 1.0 and hit["method"].startswith("wilson"), "never a zero-width interval"
    assert hit["lo"] == pytest.approx(rate_ci(331, 331)["lo"]), (
        "each image counted once, not once per seed (1655)"
    )
    t = X.seed_contrast(hit, none, "training seeds")
    assert t["unit"] == "training seeds" and t["n"] == 5 and "pooled" not in t["test"]
    assert t["test"].startswith("exact sign test over seeds") and t["p"] == pytest.approx(2 * 0.5**5), (
        "five seeds cannot give p < 0.0625 without a t test's assumptions"
    )
    assert -1 <= t["lo"] <= t["diff"] <= t["hi"] <= 1
    assert t["lo"] == pytest.approx(rate_diff_test(331, 331, 0, 331, "x")["lo"]), (
        "Newcombe over one seed's 331 images"
    )
    varied = X.seed_contrast(
        X.seed_rate([90, 95, 99, 97, 92], [100] * 5), X.seed_rate([0] * 5, [100] * 5), "training seeds"
    )
    assert (
        varied["test"] == "paired t"
        and varied["unit"] == "training seeds"
        and varied["diff"] == pytest.approx(0.946)
    )


def test_a_difference_of_rates_never_leaves_its_range():
    from heredity.experiments import data_attacks as X

    # the old report's +0.994 [0.983, 1.005]: a t interval over seeds near the bound
    near = X.seed_contrast(
        X.seed_rate([329, 331, 328, 331, 330], [331] * 5), X.seed_rate([0] * 5, [331] * 5), "training seeds"
    )
    assert (
        near["test"] == "paired t" and near["hi"] <= 1.0 and near["lo"] >= -1.0 and near["lo"] < near["diff"]
    )
    down = X.seed_contrast(
        X.seed_rate([0] * 5, [331] * 5), X.seed_rate([329, 331, 328, 331, 330], [331] * 5), "training seeds"
    )
    assert down["lo"] >= -1.0


def test_every_model_is_an_intersection_union_test_over_per_model_mcnemar():
    from heredity.experiments import data_attacks as X
    from heredity.reports.stats import paired_rate_test

    a = np.array(
        [[1] * 90 + [0] * 10, [1] * 60 + [0] * 40, [1] * 5 + [0] * 95]
    )  # three models' hits on 100 images
    b = np.zeros((3, 100), int)
    tables = [X.paired_table(x, y) for x, y in zip(a, b, strict=True)]
    assert tables[0] == [0, 90, 0, 10] and X.outcomes(tables[1])[0] == [1] * 60 + [0] * 40
    t = X.every_model(tables, "images")
    per = [paired_rate_test(x, y, "images")["p"] for x, y in zip(a, b, strict=True)]
    assert t["p"] == max(per) and t["weakest"] == 2 and t["n"] == 100 and t["models"] == 3
    assert t["diff"] == pytest.approx(0.05) and t["lo"] <= 0.05 <= t["hi"], "the weakest model's own interval"


def test_the_holm_families_come_from_the_config_and_size_the_smallest_detectable_effect():
    from heredity.experiments import data_attacks as X
    from heredity.reports.stats import min_detectable

    cfg = X.Config()
    fam = X.families(cfg)
    assert fam == X.families(X.Config()) and set(fam) == {X.TRAINING, X.MODELS}
    n_trig = sum(c > 0 for c in cfg.counts) * len(cfg.widths)
    assert len(fam[X.MODELS]) == n_trig
    # trigger + width + flips + adversarial training + transfer + 4 uncertainty contrasts per OOD set
    assert len(fam[X.TRAINING]) == (
        n_trig
        + len(cfg.widths)
        - 1
        + len(cfg.flip_rates)
        - 1
        + 4
        + sum(e > 0 for e in cfg.eps)
        + 4 * len(X.OOD_SETS)
    )
    assert "width/c10/w1024" in fam[X.TRAINING], "the count-by-width claim is tested, not read off a grid"
    assert not any(i.startswith("models/") for i in fam[X.TRAINING]), "one unit per family"
    # a null's smallest detectable effect is at the family's level, not at α = 0.05
    assert min_detectable(0.01, 5, family=len(fam[X.TRAINING])) > 2 * min_detectable(0.01, 5, family=1)


COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "results" / "data-attacks-quick"


def _committed():
    return json.loads(COMMITTED.with_suffix(".json").read_text()), COMMITTED.with_suffix(".md").read_text()


def test_the_committed_report_has_no_verdict_its_interval_contradicts_and_no_p_of_zero():
    from heredity.reports.stats import verdict

    rep, md = _committed()
    for c in rep["comparisons"]:
        t = c["test"]
        v = verdict(t, 0, p=c["p_holm"])
        if v["result"] == "null":
            assert t["lo"] <= 0 <= t["hi"], f"{c['what']}: called a null, interval excludes 0"
    assert not re.search(r"p = 0(\.0+)?(e\+00)?\b(?!\.)", md), (
        "a p below double precision is printed as a bound"
    )
    for null in re.finditer(r"\(a null result\)", md):  # the interval it reads: the nearest one before it
        lo, hi = re.findall(r"Δ [+-]?[\d.]+ \[(-?[\d.]+), (-?[\d.]+)\]", md[: null.start()])[-1]
        assert float(lo) <= 0 <= float(hi), (
            f"the report calls a null what its interval excludes: [{lo}, {hi}]"
        )


def test_the_committed_report_keeps_every_interval_in_range_and_never_pools_seeds():
    rep, md = _committed()
    for c in rep["comparisons"]:
        t = c["test"]
        if t["lo"] is not None:
            assert -1.0 <= t["lo"] <= t["hi"] <= 1.0, f"{c['what']}: {t['lo']}, {t['hi']}"
        assert "pooled" not in t["unit"] and "pooled" not in t["test"], (
            f"{c['what']}: an image counted once per seed"
        )
    for b in rep["poisoning"]["badnets"]:
        for k in ("attack_success", "clean_accuracy"):
            x = b[k]
            assert 0 <= x["lo"] <= x["mean"] <= x["hi"] <= 1
            assert "pooled" not in x.get("method", "")


def test_the_committed_report_tests_exactly_its_declared_families_one_unit_each():
    from heredity.experiments import data_attacks as X

    rep, md = _committed()
    cfg = X.Config(**rep["config"])
    assert rep["families"] == X.families(cfg)
    got = {f: [c["id"] for c in rep["comparisons"] if c["family"] == f] for f in rep["families"]}
    assert got == rep["families"]
    for c in rep["comparisons"]:
        assert c["p_holm"] is None or c["p_holm"] >= c["test"]["p"]
        seeds = c["test"]["unit"].startswith(("training seeds", "ensembles"))
        assert seeds == (c["family"] == X.TRAINING), f"{c['what']}: one unit per family"
    assert {c["test"]["test"] for c in rep["comparisons"] if c["family"] == X.MODELS} <= {
        f"McNemar exact, each of {cfg.seeds} models; p: the largest (every model)"
    }
    assert all(c["test"]["test"] != "Welch t" for c in rep["comparisons"]), (
        "no arm sharing models tested as independent"
    )
    _paired_arms(rep)
    for c in rep["comparisons"]:
        if c.get("mde") is not None:
            from heredity.reports.stats import min_detectable

            assert c["mde"] == pytest.approx(
                min_detectable(c["test"]["sd"], c["test"]["n"], family=len(rep["families"][c["family"]]))
            )


def test_colour_images_get_the_trigger_in_every_channel_and_cifar_batches_load(tmp_path):
    import pickle

    from heredity.data.digits import load_digit_arrays

    assert poison.image_shape(64) == (1, 8, 8) and poison.image_shape(784) == (1, 28, 28)
    assert poison.image_shape(3072) == (3, 32, 32)
    x = np.zeros((4, 3072), np.uint8)
    t = poison.apply_trigger(x, 3, 255)
    hit = np.flatnonzero(t[0])
    assert len(hit) == 27 and set(hit // 1024) == {0, 1, 2}, "a 3x3 square in each of the three planes"
    assert all(((h % 1024) // 32) >= 29 and (h % 32) >= 29 for h in hit), "in the bottom-right corner"
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                    b"labels": list(rng.integers(0, 10, 6)),
                },
                f,
            )
    a = load_digit_arrays(str(tmp_path))
    assert a.x_train.shape == (30, 3072) and a.x_test.shape == (6, 3072) and a.scale == 255.0
    (tmp_path / "data_batch_3").unlink()
    from heredity.errors import HeredityError

    with pytest.raises(HeredityError, match="no data_batch_3"):
        load_digit_arrays(str(tmp_path))


def test_the_resnet_path_runs_end_to_end_and_its_siblings_share_the_initialization(tmp_path):
    from heredity.experiments import data_attacks as X
    from heredity.store import Store

    store = Store(tmp_path / "h")
    cfg = X.Config(
        model="resnet",
        seeds=2,
        epochs=1,
        hidden=4,
        widths=[4],
        counts=[0, 50],
        flip_rates=[0.0],
        eps=[0.0, 0.1],
        train_eps=0.1,
        flag_eps=0.1,
        flag_count=50,
        pgd_steps=2,
        ensembles=2,
        ensemble_size=2,
        mc_passes=2,
        angles=[0, 45],
        noise_images=20,
        detectors=["activation_clustering"],
    )
    rep = json.loads((store.path(X.run(store, cfg, progress=False)["report"]) / "report.json").read_text())
    a_id, b_id, c_id = (rep["adversarial"]["siblings"][k] for k in "ABC")
    assert store.get(a_id).meta["type"] == "resnets" and store.step_of(a_id).config["model"] == "resnet"
    from heredity.data.poison import image_shape

    def init(seed, i):  # what _train_resnets builds before training
        torch.manual_seed(seed * 7919 + i)
        return X.resnet(image_shape(64), 10, 4).state_dict()

    sa, sc = store.step_of(a_id).config, store.step_of(c_id).config
    assert sa["init_seed"] == store.step_of(b_id).config["init_seed"] != sc["init_seed"]
    w = "1.weight"  # the stem convolution
    assert torch.equal(init(sa["init_seed"], 0)[w], init(sa["init_seed"], 0)[w])
    assert not torch.equal(init(sa["init_seed"], 0)[w], init(sc["init_seed"], 0)[w])
    m = X.load_models(store, a_id)
    assert m.n == 2 and m.logits(np.zeros((3, 64), np.float32)).shape == (2, 3, 10)
    b = rep["poisoning"]["badnets"][-1]
    assert (
        0 <= b["attack_success"]["mean"] <= 1
        and rep["uncertainty"]["ood"]["other digits"]["ensemble"]["auroc"]["mean"] >= 0
    )
