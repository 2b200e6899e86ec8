"""The seed papers' claims, each decided from the demo's numbers.

Every verdict is a comparison of values in ``results.json``: change a value and the verdict
follows. A section of the report adds its claims with one function in :data:`CLAIMS`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from .config import MAX_ACCURACY_DROP
from .formatting import p_is, pct
from .studies import choose_lambda

__all__ = ["CLAIMS", "VOLUME_ALPHA", "default_rows", "evaluate_claims"]

PAPER1, PAPER2 = "feature gradient flow", "GAD"
#: Significance level of the volume claims (issue 12 asks for p < 0.01).
VOLUME_ALPHA = 0.01
Claim = Dict[str, Any]


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _claim(section: str, paper: str, text: str, held: Optional[bool], evidence: str) -> Claim:
    return {"section": section, "paper": paper, "claim": text, "held": held, "evidence": evidence}


def _against_noise(section: str, model: Dict[str, Any], features: List[str], who: str, alpha: float,
                   used: bool = True) -> List[Claim]:
    """Per feature: it beats the noise (``used``, a label feature) or it does not (a decoy),
    pointwise and along the flow."""
    out = []
    for f in features:
        s, fl = model["S"][f], model["F"][f]
        ps, pf = _num(s["p"]), _num(fl["p"])
        if used:
            text = (f"{who} uses {f}, which the label depends on: it beats the noise "
                    f"baseline, pointwise and along the flow (p < {alpha})")
            held = ps < alpha and pf < alpha
        else:
            text = (f"{who} does not use the decoy {f}, which the label does not depend on: it does not "
                    f"beat the default noise, pointwise or along the flow (p ≥ {alpha})")
            held = ps >= alpha and pf >= alpha
        out.append(_claim(
            section, PAPER1, text, held if _finite(ps, pf) else None,
            f"S/noise ×{_num(s['ratio']):.2g} ({p_is(ps)}), F/noise ×{_num(fl['ratio']):.2g} ({p_is(pf)})"))
    return out


def _regularizer_claims(section: str, les: Dict[str, Any], who: str, alpha: float, drop: float) -> List[Claim]:
    plain, reg = les["plain"], les["regularized"]
    j0, j1, pj = _num(plain["J_mean"]), _num(reg["J_mean"]), _num(les["J_paired_p"])
    rose = j1 > j0
    b0, b1 = _num(plain["balanced_accuracy"]), _num(reg["balanced_accuracy"])
    return [
        _claim(section, PAPER1,
               f"The alignment regularizer raises the share of the gradient the features explain (J){who}",
               (rose and pj < alpha) if _finite(j0, j1, pj) else None,
               f"J {'rose' if rose else 'went'} from {pct(j0)} to {pct(j1)} (×{j1 / j0:.2f}), "
               f"paired Wilcoxon {p_is(pj)}"),
        _claim(section, PAPER1, f"... at nearly the same balanced accuracy (a fall of at most {drop}){who}",
               b0 - b1 <= drop if _finite(b0, b1) else None,
               f"balanced accuracy {b0:.3f} → {b1:.3f} ({b1 - b0:+.3f})"),
    ]


def alignment_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """The unregularized model uses the label's features and not the decoy; the regularizer
    raises J cheaply."""
    les, who = results["alignment"], "The unregularized model"
    return (_against_noise("alignment", les["plain"], les["regularized_features"], who, alpha)
            + _regularizer_claims("alignment", les, "", alpha, drop)
            + _against_noise("alignment", les["plain"], les.get("decoys", []), who, alpha, used=False))


def lambda_sweep_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """The largest λ within the accuracy budget raises J; the sweep reaches the trade-off."""
    rows = results["lambda_sweep"]["rows"]
    by_lam = {float(r["lambda"]): r for r in rows}
    b0 = _num(by_lam[0.0]["balanced_accuracy"])
    chosen = choose_lambda(rows, drop)
    text = ("Tuning λ as large as possible without hurting accuracy raises J: at the largest λ whose balanced "
            f"accuracy is within {drop} of λ = 0's, J is higher than at λ = 0 (paired, p < {alpha})")
    if chosen is None:
        first = _claim("lambda_sweep", PAPER1, text, None, "λ = 0's balanced accuracy is undefined")
    else:
        row = by_lam[chosen]
        j0, jc, pc = _num(by_lam[0.0]["J_mean"]), _num(row["J_mean"]), _num(row.get("J_paired_p"))
        held = (chosen > 0 and jc > j0 and pc < alpha) if chosen == 0 or _finite(j0, jc, pc) else None
        first = _claim("lambda_sweep", PAPER1, text, held,
                       f"chosen λ = {chosen:g} (balanced accuracy ≥ {b0 - drop:.3f}); J {pct(j0)} at λ = 0 → "
                       f"{pct(jc)}" + (f", paired Wilcoxon {p_is(pc)}" if chosen > 0 else ""))
    accs = [(float(r["lambda"]), _num(r["balanced_accuracy"])) for r in rows if r["lambda"] > 0]
    below = [lam for lam, b in accs if not (b >= b0 - drop)]
    second = _claim("lambda_sweep", PAPER1, "The sweep reaches the trade-off: some λ costs more balanced accuracy "
                    f"than {drop} (or diverges)", bool(below) if math.isfinite(b0) else None,
                    ("λ = " + ", ".join(f"{lam:g}" for lam in below) + " fell below " if below
                     else f"every λ up to {max(lam for lam, _ in accs):g} stayed at or above ") + f"{b0 - drop:.3f}")
    return [first, second]


def ablation_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """Removing a feature's weight lowers that feature's alignment."""
    abl = results["ablation"]
    out = []
    for f, row in abl["removed"].items():
        s_full, s_without, p = _num(abl["full"]["S"][f]["mean"]), _num(row["S"][f]["mean"]), _num(row["S_drop_p"])
        out.append(_claim(
            "ablation", PAPER1, f"The weight on {f} is what raises {f}'s alignment: training without it "
            f"lowers S({f}) (paired, p < {alpha})",
            (s_full > s_without and p < alpha) if _finite(s_full, s_without, p) else None,
            f"mean S({f}) {s_full:.3g} with every weight, {s_without:.3g} without {f}'s; paired Wilcoxon {p_is(p)}; "
            f"J {pct(_num(abl['full']['J_mean']))} vs {pct(_num(row['J_mean']))}"))
    return out


def one_output_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """The paper's one-logit model: the same checks as the two-logit one."""
    one = results["one_output"]
    feats = results["alignment"]["regularized_features"]
    return (_against_noise("one_output", one["plain"], feats, "The paper's one-output model (λ = 0)", alpha)
            + _regularizer_claims("one_output", one, " (one-output model)", alpha, drop))


def noise_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """Per construction, the decoy does not beat noise; the label's main feature always does."""
    study = results["noise"]
    decoy, out = study["decoy"], []
    for row in study["rows"]:
        p = _num(row["models"]["plain"]["S"][decoy]["p"])
        out.append(_claim(
            "noise", PAPER1, f"With noise drawn as \"{row['construction']}\", the decoy feature {decoy} "
            f"(not in the label's rule) does not beat noise on the λ = 0 model (p ≥ {alpha})",
            p >= alpha if math.isfinite(p) else None,
            f"S/noise ×{_num(row['models']['plain']['S'][decoy]['ratio']):.2g} ({p_is(p)})"))
    main = study["label_features"][0]
    ps = [_num(row["models"]["plain"]["S"][main]["p"]) for row in study["rows"]]
    out.append(_claim(
        "noise", PAPER1, f"{main}, which the label depends on, beats noise on the λ = 0 model under every "
        f"construction (p < {alpha})", all(p < alpha for p in ps) if _finite(*ps) else None,
        "; ".join(f"{row['construction']}: {p_is(p)}" for row, p in zip(study["rows"], ps))))
    return out


def gad_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """GAD's maps are simpler, and what they keep matters more than what they drop."""
    gad = results["gad"]["methods"]
    out = []
    for name, m in gad.items():
        rc, nb, ng = _num(m["median_rc"]), _num(m["median_regions_base"]), _num(m["median_regions_gad"])
        out.append(_claim(
            "gad", PAPER2, f"GAD({name}) gives simpler explanations: a smaller area (median RC < 1) in no "
            "more regions than the base map", (rc < 1 and ng <= nb) if math.isfinite(rc) else None,
            f"median RC = {rc:.2f}; median regions {nb:g} → {ng:g}"))
    for name, m in gad.items():
        frac, p = _num(m["frac_rs_gad_greater"]), _num(m["rs_paired_p"])
        out.append(_claim(
            "gad", PAPER2, f"What GAD({name}) keeps matters more than what it drops: RS(GAD) > RS(base minus GAD)",
            (frac > 0.5 and p < alpha) if _finite(p, frac) else None,
            f"on {pct(frac)} of images; median RS {_num(m['median_rs_gad']):.3g} vs "
            f"{_num(m['median_rs_rest']):.3g}; paired Wilcoxon {p_is(p)}"))
    return out


def default_rows(sweep: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Per method, the sweep's row at GAD's default ``delta``."""
    delta = float(sweep["defaults"]["delta"])
    return {r["method"]: r for r in sweep["rows"] if math.isclose(float(r["delta"]), delta)}


def gad_sweep_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """Issue 13's targets at the defaults: GAD removes enough, and what it keeps matters."""
    sweep = results["gad_sweep"]
    kept_max, win_min, win_alpha, q = sweep["kept_max"], sweep["win_min"], sweep["win_alpha"], sweep["q"]
    where = "" if sweep["at_defaults"] else (f" (quick: T = {sweep['fixed']['n_support']}, "
                                              f"{sweep['fixed']['steps']} steps)")
    out = []
    for name, row in default_rows(sweep).items():
        kept, win, p = _num(row["kept_fraction"]), _num(row["rs_win_rate"]), _num(row["rs_p"])
        out.append(_claim(
            "gad_sweep", PAPER2, f"The default GAD({name}) keeps at most {100 * kept_max:g}% of the base map's "
            f"top-{100 * q:g}% pixels (median over test images)", kept <= kept_max if math.isfinite(kept) else None,
            f"median kept fraction {kept:.3f} at the default δ = {row['delta']:g}{where}"))
        out.append(_claim(
            "gad_sweep", PAPER2, f"What the default GAD({name}) keeps matters more than what it drops often enough: "
            f"RS win rate ≥ {win_min:g} with paired p < {win_alpha:g}",
            (win >= win_min and p < win_alpha) if _finite(win, p) else None,
            f"RS win rate {win:.3f} ({p_is(p)}) at the default δ = {row['delta']:g}{where}"))
    return out


def volume_claims(results: Dict[str, Any], alpha: float, drop: float) -> List[Claim]:
    """On volumes: brightness beats noise, the decoys do not, the flow ends on the boundary,
    GAD simplifies the maps."""
    vol, a = results["volumes"], VOLUME_ALPHA
    main = vol["S"][vol["rule"]]
    p = _num(main["p"])
    out = [_claim("volumes", PAPER1, f"On volumes labelled by {vol['rule']} only, the 3-D CNN uses {vol['rule']}: "
                  f"S beats the default noise (p < {a})", p < a if math.isfinite(p) else None,
                  f"S/noise ×{_num(main['ratio']):.2g} ({p_is(p)})")]
    for d in vol["decoys"]:
        pd_ = _num(vol["S"][d]["p"])
        out.append(_claim("volumes", PAPER1, f"The decoy {d} (not in the volumes' label) does not beat the default "
                          f"noise (p ≥ {a})", pd_ >= a if math.isfinite(pd_) else None,
                          f"S/noise ×{_num(vol['S'][d]['ratio']):.2g} ({p_is(pd_)})"))
    reached = _num(vol["flow_reached_boundary"])
    out.append(_claim("volumes", PAPER1, "The gradient flow reaches the decision boundary on at least half of the "
                      "volumes", reached >= 0.5 if math.isfinite(reached) else None,
                      f"{pct(reached)} of {vol['flow_examples']} flows reached it"))
    g = vol["gad"]
    rc, nb, ng = _num(g["median_rc"]), _num(g["median_regions_base"]), _num(g["median_regions_gad"])
    out.append(_claim("volumes", PAPER2, "GAD(Saliency) gives simpler volume explanations: a smaller hull volume "
                      "(median RC < 1) in no more regions than Saliency's", (rc < 1 and ng <= nb)
                      if _finite(rc, nb, ng) else None, f"median RC = {rc:.2f}; median regions {nb:g} → {ng:g}"))
    return out


#: (results key, claim function) in report order; a function runs when its key is present.
CLAIMS: List[Tuple[str, Callable[[Dict[str, Any], float, float], List[Claim]]]] = [
    ("alignment", alignment_claims),
    ("lambda_sweep", lambda_sweep_claims),
    ("ablation", ablation_claims),
    ("one_output", one_output_claims),
    ("noise", noise_claims),
    ("gad", gad_claims),
    ("gad_sweep", gad_sweep_claims),
    ("volumes", volume_claims),
]


def evaluate_claims(results: Dict[str, Any], alpha: float = 0.05,
                    max_accuracy_drop: float = MAX_ACCURACY_DROP) -> List[Claim]:
    """Decide each seed-paper claim from the demo's numbers.

    ``held`` is True or False from the comparison stated in ``evidence``, or None where a
    value it needs is undefined (NaN or null).

    Args:
        results: The ``results.json`` content of :func:`~captum_gradflow.demo.run_demo`.
        alpha: Significance level of the one-sided tests.
        max_accuracy_drop: Largest fall of balanced accuracy that still counts as "at nearly
            the same accuracy"; also the budget of the λ sweep's choice.

    Returns:
        One dict per claim with ``section`` (the results key it reads), ``paper``,
        ``claim``, ``held`` and ``evidence``.

    Examples::

        >>> claims = evaluate_claims(json.load(open("demo_out/results.json")))  # doctest: +SKIP
        >>> [c["held"] for c in claims][:4]  # doctest: +SKIP
        [True, False, True, True]
    """
    claims: List[Claim] = []
    for key, decide in CLAIMS:
        if key in results:
            claims += decide(results, alpha, max_accuracy_drop)
    return claims
