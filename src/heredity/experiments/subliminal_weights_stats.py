"""subliminal-weights' statistics: everything that decides the outcome, from the panel scores and the adapter
geometry to the verdict.

- **The gate** (``gate_table``): a trait teacher's lift over the neutral teacher on every panel animal; its
  specificity (own lift − mean lift on the other panel animals) must reach ``gate`` nats.
- **Per student group** (arm, dose, initialization; ``student_results``) over the replicates that passed the
  gate: the K × K lift matrix over the twins (``evals.lift.lift_report``: transfer, specificity, permutation
  test), the share of its teacher's own lift a student recovers, the correlation of the two lift profiles over
  the panel, and the cosines of the students' adapter changes with their teachers'.
- **The tests** (``family_tests``): every test the design defines (``subliminal_weights.family_for``), paired
  over replicates; ``family_rows`` adjusts them by Holm over the declared family, adds the smallest detectable
  effects and verdicts.
- **The positive control** (``control_result``): the share of the teachers' specificity that full-vocabulary
  distillation on the neutral teacher's texts recovers.
- **The outcome**: one sentence per finding, the primary test first.

Rendering (markdown, plot) is in ``subliminal_weights_render``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from heredity.experiments.subliminal_weights import Config

# shared by the experiment, its statistics and its rendering
NEUTRAL = "neutral"
UNIT = "replicates (adapter initializations)"
NUMBER_GRAMMAR = r"[1-9][0-9]{0,2}(, [1-9][0-9]{0,2}){4,9}"  # 5–10 numbers of ≤ 3 digits, comma-separated
# the cosine tests' names (after "same − other: ") and the geometry keys they compare, in test order
COSINE_KEYS = {"cosine ΔW": "cos_dw", "cosine ΔW, trait-specific": "cos_dw_trait", "cosine LoRA": "cos_lora"}


def gate_table(tscore: dict, config: Config) -> dict[int, dict[str, dict]]:
    """Per replicate and trait teacher: its lift over the neutral teacher on every panel animal, its own lift,
    the mean lift on the other panel animals, their difference (its specificity) and whether it passes
    ``gate``."""
    out = {}
    for r in range(config.replicates):
        out[r] = {}
        for a in config.animals:
            lift = {j: tscore[(r, a)][j] - tscore[(r, NEUTRAL)][j] for j in config.panel}
            others = float(np.mean([v for j, v in lift.items() if j != a]))
            spec = lift[a] - others
            out[r][a] = {
                "lift": lift,
                "own": lift[a],
                "others": others,
                "specificity": spec,
                "passed": bool(spec >= config.gate),
            }
    return out


def build_report(config: Config, tscore, gates, passed, sscore, geo, tcounts, ncounts) -> dict:
    """The report: the gate, the data counts, every student group's results, the declared family's tests (with
    the values each is computed from) and the positive control."""
    n = len(passed)
    students = student_results(config, gates, passed, sscore, geo)
    out_tests = family_rows(family_tests(config, students, n), list(config.family), n)
    for t in out_tests:
        if t.get("test"):
            t["per_replicate"] = test_values(t["name"], students)
    control = control_result(config, students, gates, passed, sscore) if config.control and n >= 1 else None
    return {
        "experiment": "subliminal-weights",
        "config": config.model_dump(),
        "unit": UNIT,
        "replicates_passed": passed,
        "gates": {str(r): g for r, g in gates.items()},
        "teacher_scores": {f"r{r}/{t}": s for (r, t), s in tscore.items()},
        "teacher_data": tcounts,
        "number_data": ncounts,
        "results": students,
        "tests": out_tests,
        "control": control,
    }


def student_groups(config: Config) -> list[tuple[str, int, str, list[str]]]:
    """(arm, dose, label, initializations) of every student group, in report order; the positive control
    last."""
    out = [(arm, d, f"{arm}@{d}", list(config.inits)) for arm in config.arms for d in config.steps]
    if config.control:
        out.append(("control", max(config.steps), "control", ["same"]))
    return out


def student_results(config: Config, gates, passed, sscore, geo) -> dict[str, dict]:
    """Per group and initialization ("{label} {init}"): the lift results over the passing replicates (none if
    no replicate passed) and the cosines with the teachers' changes."""
    students = {}
    for arm, d, lab, inits in student_groups(config):
        for init in inits:
            res = lift_results(config, gates, passed, sscore, (arm, d, init)) if passed else {}
            res["cosine"] = cosine_results(config, passed, geo, (arm, d, init))
            students[f"{lab} {init}"] = res
    return students


def lift_results(config: Config, gates, passed, sscore, group: tuple) -> dict:
    """One group's lift matrix over the twins (``lift_report``), the share of its teacher's own lift each
    trait student recovers, and the correlation of its lift profile with its teacher's over the panel."""
    from heredity.evals.lift import lift_report
    from heredity.reports.stats import mean_ci

    animals = list(config.animals)

    def score(r, t, j):
        return sscore[(*group, r, t)][j]

    logp = np.array([[[score(r, i, j) for j in animals] for r in passed] for i in animals])  # [K, n, K]
    twin = np.array([[score(r, NEUTRAL, j) for j in animals] for r in passed])  # [n, K]
    res = lift_report(logp, twin, animals, family=len(config.family))
    res["recovery"] = {
        a: mean_ci([(score(r, a, a) - score(r, NEUTRAL, a)) / gates[r][a]["own"] for r in passed])
        for a in animals
    }
    res["profile_corr"] = {
        a: mean_ci([profile_corr(config, gates, sscore, (*group, r), a) for r in passed]) for a in animals
    }
    return res


def profile_corr(config: Config, gates, sscore, student: tuple, a: str) -> float:
    """Correlation over the panel of teacher ``a``'s lift profile and its student's (each over its twin);
    ``student`` is (arm, dose, init, replicate)."""
    r = student[-1]
    s = [sscore[(*student, a)][j] - sscore[(*student, NEUTRAL)][j] for j in config.panel]
    t = [gates[r][a]["lift"][j] for j in config.panel]
    return float(np.corrcoef(s, t)[0, 1]) if np.std(s) > 0 and np.std(t) > 0 else math.nan


def cosine_results(config: Config, passed, geo, group: tuple) -> dict:
    """Per replicate, the group's mean cosines with the teachers' changes (over its students that have each),
    and the trait students' ΔW cosine with their own teacher beside that with the other trait teachers."""
    from heredity.reports.stats import mean_ci, spread_note

    animals = list(config.animals)
    cos = {
        k: [
            float(np.mean([geo[(*group, r, t)][k] for t in [NEUTRAL, *animals] if k in geo[(*group, r, t)]]))
            for r in passed
        ]
        for k in ("cos_dw", "cos_lora", "cos_dw_trait", "cos_dw_other_teacher")
    }
    # the same trait students' cosine with their own teacher, beside cos_dw_other_teacher
    cos["cos_dw_own_teacher"] = [
        float(np.mean([geo[(*group, r, t)]["cos_dw"] for t in animals])) for r in passed
    ]
    return {k: {**mean_ci(v), "per_replicate": v, "spread_note": spread_note(len(v))} for k, v in cos.items()}


def family_tests(config: Config, students: dict, n: int) -> dict[str, dict]:
    """Every test the design defines, by name: a group's same-init specificity and transfer; paired over the n
    passing replicates, same-init minus each other initialization's specificity, same- minus other-init
    cosines, and own − other trait teacher's ΔW cosine; the positive control's specificity and transfer."""
    from heredity.reports.stats import paired_test

    tests: dict[str, dict] = {}
    unit = f"{UNIT}, n = {n}"
    for arm, _, lab, inits in student_groups(config):
        if arm == "control":
            tests["control: specificity"] = students["control same"].get("specificity", {})
            tests["control: transfer"] = students["control same"].get("transfer", {})
            continue
        same = students[f"{lab} same"]
        tests[f"{lab} same: specificity"] = same.get("specificity", {})
        tests[f"{lab} same: transfer"] = same.get("transfer", {})
        if n < 1:
            continue
        for init in inits[1:]:
            tests[f"{lab} same − {init}: specificity"] = paired_test(
                same["specificity"]["per_seed"], students[f"{lab} {init}"]["specificity"]["per_seed"], unit
            )
        if "other" in inits:
            for what, key in COSINE_KEYS.items():
                tests[f"{lab} same − other: {what}"] = paired_test(
                    same["cosine"][key]["per_replicate"],
                    students[f"{lab} other"]["cosine"][key]["per_replicate"],
                    unit,
                )
        tests[f"{lab} same: cosine ΔW, own − other trait teacher"] = paired_test(
            same["cosine"]["cos_dw_own_teacher"]["per_replicate"],
            same["cosine"]["cos_dw_other_teacher"]["per_replicate"],
            unit,
        )
    return tests


def teacher_specificity(gates, r: int, animals: list[str]) -> float:
    """Replicate r's teachers' mean specificity over the K trait animals (the primary test's quantity)."""
    return float(
        np.mean(
            [
                gates[r][a]["lift"][a] - np.mean([gates[r][a]["lift"][b] for b in animals if b != a])
                for a in animals
            ]
        )
    )


def control_result(config: Config, students: dict, gates, passed, sscore) -> dict:
    """The positive control: the share of the teachers' *specificity* (over the K trait animals, the quantity
    of the primary test) the wide channel recovers, per replicate; the share of their own-animal lift beside
    it."""
    from heredity.reports.stats import mean_ci, spread_note

    animals, n, top = list(config.animals), len(passed), max(config.steps)
    spec = students["control same"]["specificity"]["per_seed"]
    per_rep = [sp / teacher_specificity(gates, r, animals) for sp, r in zip(spec, passed, strict=True)]
    share = {
        **mean_ci(per_rep),
        "per_replicate": per_rep,
        "spread_note": spread_note(n),
        "teacher_specificity": [teacher_specificity(gates, r, animals) for r in passed],
    }
    lift_share = [
        float(
            np.mean(
                [
                    (
                        sscore[("control", top, "same", r, a)][a]
                        - sscore[("control", top, "same", r, NEUTRAL)][a]
                    )
                    / gates[r][a]["own"]
                    for a in animals
                ]
            )
        )
        for r in passed
    ]
    return {
        "share": share,
        "target": config.control_share,
        "per_animal": students["control same"]["recovery"],
        "own_lift_share": {**mean_ci(lift_share), "per_replicate": lift_share, "spread_note": spread_note(n)},
        "reached": bool(share["mean"] == share["mean"] and share["mean"] >= config.control_share),
    }


def family_rows(tests: dict[str, dict], family: list[str], n: int) -> list[dict]:
    """The declared family's rows, in order: each test with its Holm-adjusted p over the whole family (a
    member not tested, or with an undetermined p, counts as p = 1: the family never shrinks), its smallest
    detectable effect at α / |family| with n − 1 degrees of freedom, and its verdict."""
    from heredity.reports.stats import holm_family, min_detectable, spread_note, verdict

    adj = holm_family({name: tests[name].get("p") for name in family if tests.get(name)}, family)
    rows = []
    for name in family:
        t = {
            k: v
            for k, v in (tests.get(name) or {}).items()
            if k not in ("name", "primary", "p_holm", "min_detectable", "spread_note", "verdict")
        }
        sd = t.get("sd")
        ok = isinstance(sd, (int, float)) and math.isfinite(sd) and sd > 0
        determined = bool(t) and math.isfinite(adj.get(name, math.nan))
        row = {
            "name": name,
            "primary": name == family[0],
            **t,
            "p_holm": adj[name] if determined else None,
            "min_detectable": min_detectable(sd, t.get("n", 0), family=len(family)) if t and ok else math.nan,
            "spread_note": spread_note(n),
        }
        row["verdict"] = (
            verdict(t, expected=+1, p=adj[name] if determined else math.nan)["words"]
            if t
            else "not tested (too few replicates passed the gate)"
        )
        rows.append(row)
    return rows


def test_values(name: str, results: dict) -> list[float] | None:
    """The per-replicate values a test of the family is computed from (differences for a paired test), read
    back from the report's results, so a narrow interval over n ≤ 3 is always printed with its values."""
    lab, _, rest = name.partition(" ")
    if lab == "control:":
        return results.get("control same", {}).get(rest, {}).get("per_seed")
    same = results.get(f"{lab} same", {})
    if rest in ("same: specificity", "same: transfer"):
        return same.get(rest.split(": ")[1], {}).get("per_seed")
    if rest == "same: cosine ΔW, own − other trait teacher":
        a, b = (
            same["cosine"]["cos_dw_own_teacher"]["per_replicate"],
            same["cosine"]["cos_dw_other_teacher"]["per_replicate"],
        )
        return [x - y for x, y in zip(a, b, strict=True)]
    head, _, what = rest.partition(": ")
    other = results.get(f"{lab} {head.split(' − ')[-1]}", {})
    if what == "specificity":
        a, b = same["specificity"]["per_seed"], other["specificity"]["per_seed"]
    else:
        a, b = (x["cosine"][COSINE_KEYS[what]]["per_replicate"] for x in (same, other))
    return [x - y for x, y in zip(a, b, strict=True)]


def rerender(r: dict) -> dict:
    """A committed report brought to the current statistics from its own stored tests (Holm over the declared
    family, detection limits, verdicts, outcome); nothing retrained or rescored."""
    r = json.loads(json.dumps(r))
    tests = {t["name"]: t for t in r["tests"] if t.get("test")}
    r["tests"] = family_rows(tests, list(r["config"]["family"]), len(r["replicates_passed"]))
    for t in r["tests"]:
        if t.get("test"):
            t["per_replicate"] = test_values(t["name"], r["results"])
    r["outcome"] = outcome(r)
    return r


# ---- the outcome ---------------------------------------------------------------------------------


def outcome(r: dict) -> str:
    """One sentence per finding, joined by "; ": the primary test, same − other init specificity, the cosine
    tests, own − other trait teacher's cosine, the positive control. A teacher failure when under 2 replicates
    passed."""
    c = r["config"]
    n, R = len(r["replicates_passed"]), c["replicates"]
    if n < 2:
        return (
            f"teacher failed: {n} of {R} replicates have every trait teacher above the gate "
            f"({c['gate']} nats of own-animal specificity); no test over replicates is possible"
        )
    tests = {t["name"]: t for t in r["tests"]}
    prim = r["tests"][0]
    lab = prim["name"].split(" ")[0]
    parts = [primary_sentence(r, prim, lab, n, R)]
    dis = tests.get(f"{lab} same − other: specificity")
    if dis and dis.get("test"):
        parts.append(init_sentence(dis))
    parts += cosine_sentences(r, tests, lab)
    if r.get("control"):
        parts.append(control_sentence(r["control"], prim))
    return "; ".join(parts)


def primary_sentence(r: dict, prim: dict, lab: str, n: int, R: int) -> str:
    from heredity.reports.stats import fmt_num, fmt_p

    if prim.get("p_holm") is not None and prim["p_holm"] < 0.05:
        word = (
            "trait-specific transfer through number logits"
            if prim["diff"] > 0
            else "a trait-specific shift opposite to the teachers'"
        )
    elif prim.get("lo") is not None and prim["lo"] == prim["lo"] and (prim["lo"] > 0 or prim["hi"] < 0):
        word = "not significant after Holm, though its unadjusted interval excludes 0 (not a null)"
    else:
        word = (
            f"null: no trait-specific transfer detected (the smallest specificity the design could detect at "
            f"α = 0.05/{len(r['tests'])}: {fmt_num(prim['min_detectable'])} nats)"
        )
    return (
        f"Primary ({lab}, same-init specificity, {n} of {R} replicates passed the teacher gate): {word} — "
        f"{fmt_num(prim['diff'])} [{fmt_num(prim['lo'])}, {fmt_num(prim['hi'])}] nats, Holm-adjusted "
        f"{fmt_p(prim['p_holm'])} (unit: {r['unit']}, n = {n})"
    )


def init_sentence(dis: dict) -> str:
    """Same- minus other-init specificity, and what its sign says about the shared initialization."""
    from heredity.reports.stats import fmt_num, fmt_p

    said = (
        f"same − other init specificity {fmt_num(dis['diff'])} [{fmt_num(dis['lo'])}, {fmt_num(dis['hi'])}], "
        f"Holm {fmt_p(dis['p_holm'])}"
    )
    sig = dis.get("p_holm") is not None and dis["p_holm"] < 0.05
    if sig and dis["diff"] > 0:
        return said + ": same-init students carry more of it, as the theorem predicts"
    if sig:
        return said + (
            ": other-init students carry slightly *more* of it — in behaviour, what passes does not need the "
            "shared adapter initialization"
        )
    return said + ": no difference shown between same- and other-init students"


def cosine_sentences(r: dict, tests: dict, lab: str) -> list[str]:
    """The theorem checked directly: same- vs other-init students' cosine with their teacher's change, and a
    same-init student's ΔW cosine with its own teacher minus with the other trait teachers."""
    from heredity.reports.stats import fmt_num, fmt_p

    res, parts = r["results"], []
    for what, key in COSINE_KEYS.items():
        t = tests.get(f"{lab} same − other: {what}")
        if t and t.get("test"):
            parts.append(
                f"{what} of a student's change with its teacher's: same-init "
                f"{fmt_num(res[f'{lab} same']['cosine'][key]['mean'], 4)} vs other-init "
                f"{fmt_num(res[f'{lab} other']['cosine'][key]['mean'], 4)} (Δ {fmt_num(t['diff'], 4)} "
                f"[{fmt_num(t['lo'], 4)}, {fmt_num(t['hi'], 4)}], Holm {fmt_p(t['p_holm'])})"
            )
    t = tests.get(f"{lab} same: cosine ΔW, own − other trait teacher")
    if t and t.get("test"):
        parts.append(
            f"same-init ΔW cosine with its own teacher − with the other trait teachers "
            f"{fmt_num(t['diff'], 4)} [{fmt_num(t['lo'], 4)}, {fmt_num(t['hi'], 4)}], "
            f"Holm {fmt_p(t['p_holm'])}"
        )
    return parts


def control_sentence(ctl: dict, prim: dict) -> str:
    """The positive control's share of the teachers' specificity against its target; when it is not reached
    and the primary is not significant, that the null says little."""
    from heredity.reports.stats import fmt_num

    return (
        f"positive control (full-vocabulary distillation on the neutral teacher's text) recovers "
        f"{fmt_num(ctl['share']['mean'])} [{fmt_num(ctl['share']['lo'])}, {fmt_num(ctl['share']['hi'])}] of "
        f"its teachers' specificity (target {ctl['target']:g}: "
        + (
            "reached"
            if ctl["reached"]
            else "NOT reached — at this dose even a wide channel recovers little "
            "of the teachers' specificity"
            + (", so a null through numbers says little" if not (prim.get("p_holm") or 1) < 0.05 else "")
        )
        + f"; {fmt_num(ctl['own_lift_share']['mean'])} of their own-animal lift)"
    )
