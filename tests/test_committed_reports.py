"""The committed reports under docs/results keep the bar: no degenerate interval, and every p-value in prose
states its unit of replication and n beside it."""

import re
from pathlib import Path

import pytest

RESULTS = sorted((Path(__file__).resolve().parents[1] / "docs" / "results").glob("*.md"))
DEGENERATE = re.compile(r"\[([+\-−]?\d+(?:\.\d+)?(?:e-?\d+)?), \1\]")
P_VALUE = re.compile(r"\bp = \d")


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_no_zero_width_interval(path):
    bad = [line.strip()[:120] for line in path.read_text().splitlines() if DEGENERATE.search(line)]
    assert not bad, (
        f"{path.name}: zero-width intervals (use rate_ci for rates; undetermined for n < 2): {bad[:3]}"
    )


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_p_value_names_its_unit(path):
    paragraphs = re.split(r"\n\s*\n", path.read_text())
    bad = [p.strip()[:160] for p in paragraphs if P_VALUE.search(p) and not re.search(r"\bunit\b", p)]
    assert not bad, f"{path.name}: p-values without their unit of replication and n: {bad[:2]}"


def test_the_checks_can_fail():
    assert DEGENERATE.search("0.00 [0.00, 0.00]") and DEGENERATE.search("1.00 [1.00, 1.00]")
    assert not DEGENERATE.search("0.00 [0.00, 0.06]") and DEGENERATE.search("+0.00 [+0.00, +0.00]")
    assert DEGENERATE.search("−0.010 [−0.010, −0.010]") and not DEGENERATE.search("+0.00 [-0.09, +0.09]")
    assert P_VALUE.search("Welch p = 3.2e-17") and not P_VALUE.search("p undetermined")


# ---- checks on the report JSON (issue 32): verdicts, ranges, p-values, declared families, quoted figures ---

import json  # noqa: E402
import math  # noqa: E402

JSONS = sorted((Path(__file__).resolve().parents[1] / "docs" / "results").glob("*.json"))
ZERO_P = re.compile(r"\bp = 0(?:\.0+)?(?:e[+-]?0+)?(?![\d.])")
NULL_WORDS = ("a null result", "null")
RATE_KEYS = ("rate", "accuracy", "auroc", "success", "share_correct", "pass@")


def _walk(x, path=()):
    """Every dict in a report, with the keys that lead to it."""
    if isinstance(x, dict):
        yield path, x
        for k, v in x.items():
            yield from _walk(v, (*path, str(k)))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _walk(v, (*path, str(i)))


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(d):
    lo, hi = d.get("lo"), d.get("hi")
    return (lo, hi) if _finite(lo) and _finite(hi) else None


def null_contradictions(report: dict) -> list[str]:
    """Tests called null (result or words) whose own interval excludes 0."""
    bad = []
    for path, d in _walk(report):
        # the interval may sit in the dict itself or in its "test" (a verdict beside the test it reads)
        tested = [x for x in (d, d.get("test")) if isinstance(x, dict) and "diff" in x and _interval(x)]
        if not any(_interval(x)[0] > 0 or _interval(x)[1] < 0 for x in tested):
            continue
        said = " ".join(str(d.get(k, "")) for k in ("verdict", "result", "words"))
        if isinstance(d.get("verdict"), dict):
            said += " " + " ".join(str(v) for v in d["verdict"].values())
        if "a null result" in said or d.get("result") == "null" or d.get("verdict") == "null":
            bad.append("/".join(path))
    return bad


def out_of_range(report: dict) -> list[str]:
    """Intervals of rates (and of differences of rates) that leave [0, 1] (or [−1, 1])."""
    bad = []
    for path, d in _walk(report):
        iv = _interval(d)
        if iv is None:
            continue
        rate = d.get("method") in ("wilson", "exact") or any(k in p.lower() for p in path for k in RATE_KEYS)
        if not rate:
            continue
        lo_min = -1.0 if ("diff" in d or d.get("test") in ("McNemar exact", "Fisher exact")) else 0.0
        if iv[0] < lo_min - 1e-9 or iv[1] > 1 + 1e-9:
            bad.append(f"{'/'.join(path)} [{iv[0]:.4g}, {iv[1]:.4g}]")
    return bad


def _numbers(x) -> list[float]:
    if _finite(x):
        return [float(x)]
    if isinstance(x, dict):
        return [v for y in x.values() for v in _numbers(y)]
    if isinstance(x, list):
        return [v for y in x for v in _numbers(y)]
    return []


FIGURE = re.compile(r"(?<![\w./])([+\-−]?\d+\.\d+(?:e[+\-−]?\d+)?)(?![\d/])")


def unquoted_figures(report: dict) -> list[str]:
    """Decimal figures in the outcome line that no number in the report's JSON rounds to (at the printed
    precision, also as a percentage or a ratio's reciprocal is not allowed: the figure
    must be in the JSON)."""
    text = report.get("outcome")
    if not isinstance(text, str):
        return []
    values = _numbers({k: v for k, v in report.items() if k != "outcome"})
    bad = []
    for m in FIGURE.finditer(text):
        s = m.group(1).replace("−", "-")
        f = float(s)
        if "e" in s:  # scientific: the same significant digits
            digits = len(s.split("e")[0].replace("-", "").replace("+", "").replace(".", "")) - 1
            ok = any(v != 0 and f"{abs(v):.{digits}e}" == f"{abs(f):.{digits}e}" for v in values)
        else:
            dec = len(s.split(".")[1])
            ok = any(
                round(v, dec) == round(f, dec)
                or round(abs(v), dec) == abs(f)
                or round(100 * v, dec) == round(f, dec)
                for v in values
            )
        if not ok:
            bad.append(m.group(1))
    return bad


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_no_null_verdict_whose_interval_excludes_zero(path):
    bad = null_contradictions(json.loads(path.read_text()))
    assert not bad, (
        f"{path.name}: called null though the interval excludes 0 (stats.verdict says so): {bad[:3]}"
    )


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_no_rate_interval_outside_its_range(path):
    bad = out_of_range(json.loads(path.read_text()))
    assert not bad, f"{path.name}: rate intervals outside their range (use Wilson / Newcombe): {bad[:3]}"


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_no_p_value_printed_as_zero(path):
    bad = [line.strip()[:120] for line in path.read_text().splitlines() if ZERO_P.search(line)]
    assert not bad, f"{path.name}: a p-value printed as 0 (fmt_p prints a bound): {bad[:2]}"


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_every_figure_the_outcome_line_quotes_is_in_the_report(path):
    bad = unquoted_figures(json.loads(path.read_text()))
    assert not bad, f"{path.name}: the outcome quotes figures its JSON does not hold: {bad[:5]}"


@pytest.mark.parametrize(
    "path",
    [p for p in JSONS if "family" in json.loads(p.read_text()).get("config", {})],
    ids=lambda p: p.name,
)
def test_a_declared_holm_family_is_the_family_tested(path):
    """A report whose config declares its Holm family tests that family: nothing
    outside it, nothing dropped."""
    r = json.loads(path.read_text())
    family = r["config"]["family"]
    if r["experiment"] == "subliminal-weights":
        assert [t["name"] for t in r["tests"]] == family
    elif r["experiment"] == "subliminal-lift":
        from heredity.experiments.subliminal_lift import declared_holm

        for key in ("lift", "lift_numbers_prefix"):
            assert set(r[key]) <= set(family)
            adj = declared_holm(r[key], family)
            for lab, x in r[key].items():
                got = x["specificity"]["p_holm"]
                assert got is None or adj[lab] == pytest.approx(got), (key, lab)


@pytest.mark.parametrize(
    "path", [p for p in JSONS if p.name.startswith("data-quality")], ids=lambda p: p.name
)
def test_data_quality_tests_its_declared_family_and_holm_adjusts_over_all_of_it(path):
    from heredity.reports.stats import holm_family

    r = json.loads(path.read_text())
    family = r["config"]["holm_family"]
    assert [t["name"] for t in r["tests"]] == family
    adj = holm_family({t["name"]: t["p"] for t in r["tests"]}, family)
    for t in r["tests"]:
        assert t["p_holm"] == pytest.approx(adj[t["name"]]), t["name"]
        assert t["unit"] in ("training seeds", "held-out items, one trained model per arm")


def test_the_json_checks_can_fail():
    assert null_contradictions(
        {
            "a": {
                "diff": -0.03,
                "lo": -0.047,
                "hi": -0.012,
                "verdict": "no significant difference (a null result)",
            }
        }
    )
    assert not null_contradictions({"a": {"diff": -0.03, "lo": -0.047, "hi": 0.01, "verdict": "null"}})
    assert null_contradictions({"pt": {"verdict": "null", "test": {"diff": 0.02, "lo": 0.01, "hi": 0.03}}})
    assert out_of_range({"attack success": {"diff": 0.994, "lo": 0.983, "hi": 1.005}})
    assert not out_of_range({"attack success": {"diff": 0.994, "lo": 0.983, "hi": 1.0}})
    assert ZERO_P.search("p = 0.0e+00") and ZERO_P.search("p = 0") and not ZERO_P.search("p = 0.03")
    assert unquoted_figures({"outcome": "x 0.512 y", "a": 0.4}) == ["0.512"]
    assert not unquoted_figures({"outcome": "x 0.512 y", "a": [0.51249]})
    assert not unquoted_figures({"outcome": "p = 2.9e-15", "p": 2.93e-15}) and unquoted_figures(
        {"outcome": "p = 2.9e-15"}
    )


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_a_narrow_interval_over_three_or_fewer_replicates_comes_with_its_values(path):
    """Three nearly equal values give a t interval narrower than n = 3 can carry (numbers-prefix sft: 0.006
    [0.006, 0.007]); such an interval must keep its per-replicate values and the spread note beside it."""
    from heredity.reports.stats import narrow_for_n

    bad = []
    for p, d in _walk(json.loads(path.read_text())):
        iv, est = (
            _interval(d),
            d.get("diff"),
        )  # an effect (a difference), not a level such as an NLL of 4.2 ...
        if est is None and any(k in seg for seg in p for k in ("share", "cosine")):
            est = d.get("mean")  # ... except shares and cosines, which are effects on their own scale
        values = d.get("per_seed") if isinstance(d.get("per_seed"), list) else d.get("per_replicate")
        n = len(values) if isinstance(values, list) else d.get("n")
        if iv is None or not _finite(est) or not isinstance(n, int) or isinstance(n, bool):
            continue
        if narrow_for_n(est, *iv, n) and not (values and d.get("spread_note")):
            bad.append(f"{'/'.join(p)}: {est:.4g} [{iv[0]:.4g}, {iv[1]:.4g}], n = {n}")
    assert not bad, f"{path.name}: intervals narrower than n ≤ 3 can carry, without their values: {bad[:3]}"


README = Path(__file__).resolve().parents[1] / "README.md"
INTERVAL = re.compile(r"([+\-−]?\d+\.\d+)\s*\[([+\-−]?\d+\.\d+),\s*([+\-−]?\d+\.\d+)\]")
LINKED = re.compile(r"docs/results/([\w.-]+)\.(?:md|json|png)")


def _rounds_to(values: list[float], s: str) -> bool:
    s = s.replace("−", "-")
    f, dec = float(s), len(s.split(".")[1])
    return any(
        round(v, dec) == round(f, dec) or round(abs(v), dec) == abs(f) or round(100 * v, dec) == round(f, dec)
        for v in values
    )


def readme_intervals_not_in_reports(text: str, results: Path, linked: re.Pattern = LINKED) -> list[str]:
    """Every estimate with an interval the README quotes (``x [lo, hi]``) must be in the JSON of a report its
    section links (a section that links none is checked against every committed report); ``linked`` finds the
    links (the README's are ``docs/results/NAME.md``, a docs page's ``../results/NAME.md``)."""
    every = {p.stem: _numbers(json.loads(p.read_text())) for p in results.glob("*.json")}
    bad = []
    for section in re.split(r"\n(?=#{2,4} )", text):
        reports = [every[n] for n in dict.fromkeys(linked.findall(section)) if n in every]
        values = [v for vs in (reports or list(every.values())) for v in vs]
        for m in INTERVAL.finditer(section):
            missing = [g for g in m.groups() if not _rounds_to(values, g)]
            if missing:
                bad.append(f"{m.group(0)} (section {section.splitlines()[0][:60]!r})")
    return bad


def test_every_interval_the_readme_quotes_is_in_a_report_its_section_links():
    bad = readme_intervals_not_in_reports(README.read_text(), README.parent / "docs" / "results")
    assert not bad, (
        f"README figures that no linked report holds (re-render the report or fix the text): {bad[:5]}"
    )


def test_the_readme_check_can_fail(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"d": {"diff": 0.52, "lo": 0.44, "hi": 0.59}}))
    ok = "### a\n[r](docs/results/x.md): Δ +0.52 [0.44, 0.59]\n"
    assert not readme_intervals_not_in_reports(ok, tmp_path)
    assert readme_intervals_not_in_reports(ok.replace("0.59]", "0.61]"), tmp_path)


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_a_report_that_can_be_rerendered_is_already_at_the_current_statistics(path):
    """``heredity rerender`` is a fixed point on the committed reports: their Holm families, adjusted p-values
    and smallest detectable effects are what the current code computes from their own stored values."""
    from heredity.experiments import REGISTRY, get

    r = json.loads(path.read_text())
    if r.get("experiment") not in REGISTRY or not hasattr(get(r["experiment"]), "rerender"):
        pytest.skip("no rerender for this experiment: its report is checked by the other tests")
    from heredity.store.store import finite_json

    again = finite_json(get(r["experiment"]).rerender(r))
    assert json.dumps(again, sort_keys=True) == json.dumps(r, sort_keys=True), (
        f"{path.name}: run heredity rerender {path}"
    )


def test_rerender_keeps_the_command_paragraph_and_is_idempotent(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from heredity.cli import app

    src = Path(__file__).resolve().parents[1] / "docs" / "results"
    for ext in ("json", "md", "png"):
        shutil.copy(src / f"subliminal-lift-long.{ext}", tmp_path / f"r.{ext}")
    for _ in range(2):
        res = CliRunner().invoke(app, ["rerender", str(tmp_path / "r.json")])
        assert res.exit_code == 0, res.output
    md = (tmp_path / "r.md").read_text()
    assert (
        md.startswith("_Command: `heredity run subliminal-lift --preset long`")
        and md.count("by `heredity rerender`") == 1
    )
    assert (tmp_path / "r.json").read_text() == (src / "subliminal-lift-long.json").read_text()
    bad = CliRunner().invoke(app, ["rerender", str(tmp_path / "missing.json")])
    assert bad.exit_code != 0 and "cannot read it as a report.json" in str(bad.output) + str(bad.exception)
