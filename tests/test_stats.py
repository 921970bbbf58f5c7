"""Known answers for every interval and test in reports/stats.py, including the edge cases a report meets:
n = 1, 0/n, n/n, zero variance, and an effect in the direction opposite to the hypothesis."""

import math

import pytest
from scipy import stats as sps

from heredity.reports import stats as st


def isnan(x):
    return isinstance(x, float) and math.isnan(x)


# ---- rates ---------------------------------------------------------------------------------------


def test_wilson_known_values():
    # Wilson 95% for 8/10 (Newcombe 1998, table I: 0.4902, 0.9433)
    ci = st.rate_ci(8, 10)
    assert (
        ci["mean"] == 0.8
        and ci["lo"] == pytest.approx(0.4902, abs=1e-4)
        and ci["hi"] == pytest.approx(0.9433, abs=1e-4)
    )
    # 0/10 and 10/10: never a point; the bound sits at 0 or 1 and the other is 0.2775 from it
    z = st.rate_ci(0, 10)
    assert z["lo"] == 0.0 and z["hi"] == pytest.approx(0.2775, abs=1e-4)
    f = st.rate_ci(10, 10)
    assert f["hi"] == 1.0 and f["lo"] == pytest.approx(1 - 0.2775, abs=1e-4)
    one = st.rate_ci(1, 1)
    assert one["lo"] < one["hi"] and one["lo"] == pytest.approx(0.2065, abs=1e-4)


def test_exact_interval_known_values():
    # Clopper–Pearson 95% for 0/10: [0, 1 − 0.025^(1/10)] = [0, 0.3085]
    ci = st.rate_ci(0, 10, method="exact")
    assert ci["lo"] == 0.0 and ci["hi"] == pytest.approx(1 - 0.025**0.1, abs=1e-6)
    ci = st.rate_ci(3, 10, method="exact")
    assert ci["lo"] == pytest.approx(0.0667, abs=1e-4) and ci["hi"] == pytest.approx(0.6525, abs=1e-4)


def test_rate_edge_cases():
    assert isnan(st.rate_ci(0, 0)["lo"]) and st.fmt_ci(st.rate_ci(0, 0)) == "undetermined [undetermined]"
    with pytest.raises(ValueError):
        st.rate_ci(5, 3)
    assert st.rates_ci([1, 0, True, False])["mean"] == 0.5


def test_mean_ci_refuses_bernoulli_and_says_undetermined():
    with pytest.raises(ValueError, match="rate_ci"):
        st.mean_ci([1, 1, 1, 1])
    with pytest.raises(ValueError, match="rate_ci"):
        st.mean_ci([0, 1, 0, 1])
    one = st.mean_ci([0.3])
    assert one["mean"] == 0.3 and isnan(one["lo"]) and isnan(one["hi"])
    flat = st.mean_ci([0.2, 0.2, 0.2])
    assert isnan(flat["lo"]) and "undetermined" in st.fmt_ci(flat)
    # t interval known value: mean 2, sd 1, n 4 -> half width t(0.975, 3) * 0.5 = 1.5912
    ci = st.mean_ci([1.0, 2.0, 2.0, 3.0])
    assert ci["sd"] == pytest.approx(math.sqrt(2 / 3))
    assert ci["hi"] - ci["mean"] == pytest.approx(sps.t.ppf(0.975, 3) * math.sqrt(2 / 3) / 2)


# ---- tests ---------------------------------------------------------------------------------------


def test_paired_test_is_two_sided_and_reports_direction():
    a = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13]
    b = [0.20, 0.21, 0.19, 0.22, 0.18, 0.20]
    t = st.paired_test(a, b, "questions")
    ref = sps.ttest_rel(a, b)
    assert t["p"] == pytest.approx(ref.pvalue) and t["p"] < 1e-3
    assert (
        t["direction"] == "lower"
        and t["diff"] < 0
        and t["hi"] < 0
        and t["unit"] == "questions"
        and t["n"] == 6
    )
    # the swapped comparison has the same p and the opposite sign
    u = st.paired_test(b, a, "questions")
    assert u["p"] == pytest.approx(t["p"]) and u["direction"] == "higher"
    v = st.verdict(t, expected=+1)
    assert v["result"] == "opposite" and v["significant"] and "opposite" in v["words"]
    assert st.verdict(u, expected=+1)["result"] == "as hypothesised"
    text = st.fmt_test(t)
    assert "two-sided" in text and "unit: questions" in text and "n = 6" in text


def test_tests_are_undetermined_without_replication():
    assert isnan(st.welch_p([0.5], [0.1, 0.2]))
    assert isnan(st.paired_p([0.5], [0.1]))
    assert isnan(st.paired_p([0.5, 0.6], [0.4, 0.5]))  # constant differences: no variance, no p
    assert isnan(st.welch_p([0.2, 0.2], [0.1, 0.1]))
    t = st.paired_test([0.5], [0.1], "training seeds")
    assert isnan(t["p"]) and st.verdict(t)["result"] == "undetermined"
    assert "p undetermined" in st.fmt_test(t)
    w = st.welch_test([0.5], [0.1, 0.2], "training seeds")
    assert isnan(w["p"]) and st.verdict(w)["result"] == "undetermined"


def test_welch_known_values():
    a, b = [0.47, 0.52, 0.40, 0.55, 0.44], [0.10, 0.11, 0.09, 0.12]
    w = st.welch_test(a, b, "training seeds")
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue) and w["t"] == pytest.approx(ref.statistic)
    assert w["n"] == [5, 4] and w["lo"] < w["diff"] < w["hi"] and w["lo"] > 0
    assert st.welch_p(a, b) == pytest.approx(ref.pvalue)


def test_paired_rate_test_mcnemar_and_newcombe():
    # 20 items: a right on 12, b right on 6; 8 discordant for a, 2 for b
    a = [1] * 4 + [1] * 8 + [0] * 2 + [0] * 6
    b = [1] * 4 + [0] * 8 + [1] * 2 + [0] * 6
    t = st.paired_rate_test(a, b, "test items")
    assert t["discordant"] == [8, 2] and t["diff"] == pytest.approx(0.3)
    assert t["p"] == pytest.approx(sps.binomtest(8, 10).pvalue)  # 0.1094
    assert t["lo"] < 0.3 < t["hi"] and t["lo"] > -1 and t["hi"] < 1
    # identical answers: diff 0, p 1, and still an interval of positive width
    same = st.paired_rate_test(
        [1, 0, 1, 0], [1, 0, 1, 0], "test items"
    )  # identical at 0.5: Newcombe gives [0, 0]
    assert same["diff"] == 0 and same["p"] == 1.0 and same["lo"] < 0 < same["hi"]
    # all right in both: still not a point
    full = st.paired_rate_test([1] * 30, [1] * 30, "test items")
    assert full["lo"] < full["hi"]


def test_rate_diff_test_fisher():
    t = st.rate_diff_test(15, 20, 5, 20, "answers")
    assert t["p"] == pytest.approx(sps.fisher_exact([[15, 5], [5, 15]]).pvalue)
    assert t["diff"] == pytest.approx(0.5) and 0 < t["lo"] < 0.5 < t["hi"] < 1
    z = st.rate_diff_test(0, 10, 0, 10, "answers")
    assert z["diff"] == 0 and z["lo"] < 0 < z["hi"]


def test_holm_known_values():
    adj = st.holm([0.01, 0.04, 0.03, float("nan")])
    # sorted 0.01, 0.03, 0.04 with m = 3 -> 0.03, 0.06, 0.06 (monotone)
    assert adj[0] == pytest.approx(0.03) and adj[2] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert isnan(adj[3])
    assert st.holm([0.5, 0.9]) == [1.0, 1.0] and st.holm([0.01, 0.9]) == [
        pytest.approx(0.02),
        pytest.approx(0.9),
    ]


def test_min_detectable_effect():
    # with 50 units of sd 1 the 80%-power effect is about (1.96 + 0.84) / sqrt(50) ≈ 0.40
    assert st.min_detectable(1.0, 50, family=1) == pytest.approx(0.40, abs=0.01)
    assert isnan(st.min_detectable(1.0, 1, family=1))
    assert st.min_detectable(1.0, 10, family=1) > st.min_detectable(1.0, 100, family=1)


def test_min_detectable_is_computed_at_the_level_the_holm_verdict_uses_with_the_real_degrees_of_freedom():
    # 2 seeds, Holm over 3 arms: α/3 and t with 1 degree of freedom — far above the unadjusted figure
    at_holm, unadjusted = st.min_detectable(1.0, 2, family=3), st.min_detectable(1.0, 2, family=1)
    assert at_holm == pytest.approx((sps.t.ppf(1 - 0.05 / 6, 1) + sps.t.ppf(0.8, 1)) / 2**0.5)
    assert at_holm / unadjusted > 2.5  # the issue's ×2.8 (a normal quantile would understate both)
    assert st.min_detectable(1.0, 2, family=1) > (1.96 + 0.84) / 2**0.5 * 3  # t with 1 df, not the normal
    with pytest.raises(TypeError):
        st.min_detectable(1.0, 5)  # the family must be stated: no silent α = 0.05
    assert st.holm_alpha(8) == pytest.approx(0.05 / 8)
    assert "poorly estimated" in st.spread_note(3) and st.spread_note(4) == ""


def test_a_narrow_interval_from_three_nearly_equal_values_is_flagged():
    ci = st.mean_ci([0.0065, 0.0064, 0.0063])
    assert st.narrow_for_n(ci["mean"], ci["lo"], ci["hi"], 3)
    assert not st.narrow_for_n(0.006, 0.001, 0.011, 3) and not st.narrow_for_n(
        ci["mean"], ci["lo"], ci["hi"], 10
    )


def test_an_interval_that_excludes_zero_is_never_called_a_null_and_a_p_of_zero_prints_as_a_bound():
    t = {"diff": -0.030, "lo": -0.047, "hi": -0.012, "p": 0.01, "direction": "lower"}
    v = st.verdict(t, expected=0, p=0.071)  # Holm-adjusted p above α, unadjusted interval excludes 0
    assert v["result"] == "not significant after adjustment" and "not a null" in v["words"]
    assert st.verdict({**t, "lo": -0.047, "hi": 0.002}, expected=0, p=0.071)["result"] == "null"
    assert st.fmt_p(0.0) == "p < 1e-15" and "0.0e+00" not in st.fmt_test(
        {**t, "test": "x", "unit": "u", "n": 3}, p=0.0
    )


def test_verdict_null_and_holm_override():
    t = st.paired_test([0.1, 0.2, 0.3, 0.2], [0.11, 0.19, 0.31, 0.2], "questions")
    assert st.verdict(t)["result"] == "null"
    sig = st.paired_test([1.0, 1.1, 0.9, 1.2, 1.0], [0.0, 0.1, 0.05, 0.0, 0.1], "seeds")
    assert st.verdict(sig)["result"] == "as hypothesised"
    assert (
        st.verdict(sig, p=0.2)["result"] == "not significant after adjustment"
    )  # Holm decides; its CI excludes 0
    assert "Holm-adjusted" in st.fmt_test(sig, p=0.2)


def test_error_bars_are_never_negative_and_a_missing_bound_gives_no_bar():
    from heredity.reports.card import yerr

    cis = [
        {"mean": 0.5, "lo": 0.25, "hi": 0.875},
        {"mean": 0.25, "lo": None, "hi": None},
        {"mean": 0.5, "lo": float("nan"), "hi": 0.75},
        {"mean": 0.5, "lo": 0.625, "hi": 0.75},
    ]
    assert yerr(cis) == [[0.25, 0.0, 0.0, 0.0], [0.375, 0.0, 0.25, 0.25]]


def test_a_narrow_interval_is_never_printed_with_equal_bounds():
    from heredity.reports.stats import fmt_ci

    assert fmt_ci({"mean": 0.01476, "lo": 0.01452, "hi": 0.01497}) == "0.0148 [0.0145, 0.0150]"
    assert fmt_ci({"mean": 0.5, "lo": 0.4, "hi": 0.6}) == "0.500 [0.400, 0.600]"


def test_paired_bootstrap_over_items_gives_direction_size_and_an_undetermined_flat_case():
    from heredity.reports.stats import paired_bootstrap_test

    a = [0.9, 0.8, 0.95, 0.7, 0.85, 0.9, 0.75, 0.8, 0.9, 0.88, 0.92, 0.81]
    b = [
        x - d
        for x, d in zip(a, [0.1, 0.2, 0.05, 0.15, 0.1, 0.12, 0.08, 0.1, 0.2, 0.1, 0.05, 0.1], strict=True)
    ]
    t = paired_bootstrap_test(a, b, "queries")
    assert t["unit"] == "queries" and t["n"] == 12 and t["direction"] == "higher"
    assert t["diff"] == pytest.approx(0.1125) and 0 < t["lo"] < t["diff"] < t["hi"]
    assert t["p"] < 0.001  # 12 differences all positive: the sign-flip p is 2 / 2**12 at most, resampled
    even = paired_bootstrap_test([1, 0, 1, 0], [0, 1, 0, 1], "queries")
    assert even["diff"] == 0 and even["p"] > 0.5
    flat = paired_bootstrap_test([0.5, 0.6], [0.4, 0.5], "queries")
    assert math.isnan(flat["p"]) and math.isnan(flat["lo"])
