"""The report's sections: each turns one experiment's results into markdown, tables and figures.

A section function takes ``(results, parts, out)`` (the whole ``results.json`` content with
its claims, the experiment's in-memory parts by key, and the output folder) and returns a
:class:`Section`. :data:`SECTIONS` lists them in report order; adding a section to the report
is adding one function there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from . import figures
from .formatting import p_cell, pct

__all__ = ["SECTIONS", "Section", "verdict_table"]


@dataclass
class Section:
    """One section of the report: its title, markdown body (figure links relative to the
    output folder), the figures it wrote and its tables (file name -> markdown table)."""

    title: str
    body: str
    figures: Dict[str, Path] = field(default_factory=dict)
    tables: Dict[str, str] = field(default_factory=dict)


VERDICT = {True: "**claim held**", False: "**did not hold**", None: "**undecided** (a value was undefined)"}


def verdict_table(claims: List[Dict[str, Any]], section: str = "") -> str:
    """The claims (of one section, or all) as a markdown table with their verdicts."""
    lines = ["| paper | claim | evidence | verdict |", "|---|---|---|---|"]
    for c in claims:
        if not section or c.get("section") == section:
            lines.append(f"| {c['paper']} | {c['claim']} | {c['evidence']} | {VERDICT[c['held']]} |")
    return "\n".join(lines)


def _weights(weights: Dict[str, float]) -> str:
    return ", ".join(f"{w:g} ({name})" for name, w in weights.items())


def _link(what: str, path: Path, out: Path) -> str:
    return f"![{what}]({path.relative_to(out).as_posix()})"


def _feature_cells(row: Dict[str, Any]) -> str:
    return f"{row['mean']:.3g} | ×{row['ratio']:.2g} | {p_cell(row['p'])}"


def _s_cells(r: Dict[str, Any], names: List[str]) -> str:
    """Per feature, mean S and its ratio to noise, as table cells."""
    return " | ".join(f"{r['S'][n]['mean']:.3g} / ×{r['S'][n]['ratio']:.2g}" for n in names)


def _study_section(key: str, title: str, prose: List[str], table: str, what: str, fig: Path,
                   results: Dict[str, Any], out: Path) -> Section:
    """A section of one study: its prose, table, one figure and its claims' verdicts, all
    filed under ``key`` (figure key, ``table_<key>.md``, the claims' section)."""
    body = "\n".join([*prose, "", table, "", _link(what, fig, out), "",
                      verdict_table(results["claims"], key), ""])
    return Section(title, body, {key: fig}, {f"table_{key}.md": table})


def alignment_table(les: Dict[str, Any]) -> str:
    """Accuracy, J, and S and F against noise per feature, λ = 0 and regularized."""
    lines = ["| model | balanced accuracy | J: % of gradient explained (mean / median) | "
             "feature | mean S | S / noise | p (S) | mean F | F / noise | p (F) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in ("plain", "regularized"):
        r = les[model]
        label = "λ = 0" if model == "plain" else f"λ = {_weights(les['weights'])}"
        for k, name in enumerate(r["S"]):
            head = (f"| {label} | {r['balanced_accuracy']:.3f} | {pct(r['J_mean'])} / {pct(r['J_median'])} "
                    if k == 0 else "| | | ")
            lines.append(head + f"| {name} | {_feature_cells(r['S'][name])} | {_feature_cells(r['F'][name])} |")
        lines.append(f"| | | | noise (mean of {les['n_noise']}) | {r['noise_S_mean']:.3g} | | "
                     f"| {r['noise_F_mean']:.3g} | | |")
    return "\n".join(lines)


def alignment_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    les, cfg = results["alignment"], results["config"]
    p = parts["alignment"]
    labels = {"plain": "λ = 0", "regularized": f"regularized, λ = {_weights(les['weights'])}"}
    figs = {"alignment": figures.alignment_figure(p, labels, out / "figures" / "alignment_vs_noise.png"),
            "flow": figures.flow_figure(p["regularized"]["flow_example"], out / "figures" / "gradient_flow.png")}
    table = alignment_table(les)
    body = "\n".join([
        f"{les['n_train']} training and {les['n_test']} test images of {cfg['lesion_size']}×{cfg['lesion_size']} px; "
        f"the label is 1 for the top {100 * cfg['positive_fraction']:g}% of the rule `{les['rule']}`. The small CNN is "
        f"trained with λ = 0 and with the alignment regularizer (λ = {_weights(les['weights'])}, off for the first "
        f"{cfg['reg_delay_epochs']} epochs, then ramped up over {cfg['reg_warmup_epochs']}), both from the same "
        "initial weights with the same class-balanced loop and cosine learning-rate decay. On the test split, per "
        "feature: mean pointwise alignment S and flow alignment F, their mean ratio to the noise baseline, and the "
        "one-sided Wilcoxon p-value of feature > noise over test images. J is the fraction of the gradient's squared "
        "norm in the span of the three features' gradients. F is measured on the first "
        f"{les['plain']['flow_examples']} test images; the flows reached the decision boundary on "
        f"{pct(les['plain']['flow_reached_boundary'])} (λ = 0) and {pct(les['regularized']['flow_reached_boundary'])} "
        "(regularized) of them.", "",
        "Noise baseline: the library's default construction (`make_noise`: the features' mask, smoothed on "
        "its scale over every spatial axis, centred), as each comparison states it "
        f"(`NoiseComparison.construction`). For S: {les['noise']['text']}. For F: {les['noise']['flow_text']}.", "",
        table, "", _link("alignment against the noise baseline", figs["alignment"], out), "",
        _link("gradient flow of one test image", figs["flow"], out), "",
    ])
    return Section("Feature gradient flow on synthetic lesions", body, figs, {"table_alignment.md": table})


def lambda_sweep_table(sweep: Dict[str, Any]) -> str:
    """One row per λ: accuracy, J, S per feature, and whether the λ is within the budget."""
    names = next((list(r["S"]) for r in sweep["rows"] if not r["diverged"]), [])
    lines = ["| λ | balanced accuracy | J (mean) | J > λ = 0's: paired p | "
             + " | ".join(f"S({n}) / noise" for n in names) + " |", "|---" * (4 + len(names)) + "|"]
    for r in sweep["rows"]:
        mark = " (chosen)" if r["lambda"] == sweep["chosen_lambda"] else ""
        if r["diverged"]:
            lines.append(f"| {r['lambda']:g} | diverged | | |" + " |" * len(names))
            continue
        cells = _s_cells(r, names)
        lines.append(f"| {r['lambda']:g}{mark} | {r['balanced_accuracy']:.3f} | {pct(r['J_mean'])} | "
                     f"{p_cell(r['J_paired_p']) if 'J_paired_p' in r else ''} | {cells} |")
    return "\n".join(lines)


def lambda_sweep_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    sweep = results["lambda_sweep"]
    fig = figures.lambda_sweep_figure(sweep, out / "figures" / "lambda_sweep.png")
    table = lambda_sweep_table(sweep)
    trained = [f"{r['lambda']:g}" for r in sweep["rows"] if not r["reused"]]
    prose = [
        "The seed paper leaves the accuracy/alignment trade-off over λ open: tune λ as large as possible "
        "without hurting performance. The same model, data, seeds and schedule as above, at every λ below "
        f"(the brightness weight; extent gets {sweep['extent_fraction']:g} of it, the tuned proportion). "
        f"The models at λ = {', '.join(trained)} are trained here; the others are the two of section 1. "
        f"The chosen λ is the largest whose balanced accuracy is within {sweep['max_accuracy_drop']:g} of "
        "λ = 0's; the paired p compares each example's J with its J at λ = 0 (one-sided Wilcoxon).",
    ]
    return _study_section("lambda_sweep", "The λ sweep: accuracy against alignment", prose, table,
                          "accuracy and J against lambda", fig, results, out)


def ablation_table(abl: Dict[str, Any]) -> str:
    """One row per training: weights, accuracy, J, and S per feature with its noise ratio."""
    names = list(abl["full"]["S"])
    lines = ["| training | weights | balanced accuracy | J (mean) | " + " | ".join(f"S({n}) / noise" for n in names)
             + " | S(removed) lower than with every weight: paired p |", "|---" * (5 + len(names)) + "|"]
    rows = [("λ = 0", {}, abl["plain"], ""), ("every weight", abl["weights"], abl["full"], "")]
    rows += [(f"without {f}", r["weights"], r, p_cell(r["S_drop_p"])) for f, r in abl["removed"].items()]
    for label, w, r, p in rows:
        cells = _s_cells(r, names)
        lines.append(f"| {label} | {_weights(w) or '0'} | {r['balanced_accuracy']:.3f} | {pct(r['J_mean'])} | "
                     f"{cells} | {p} |")
    return "\n".join(lines)


def ablation_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    abl = results["ablation"]
    fig = figures.ablation_figure(abl, out / "figures" / "feature_ablation.png")
    table = ablation_table(abl)
    prose = [
        "The seed paper's third experiment: the regularized training of section 1 again, with each feature's "
        "weight set to 0 in turn (the other weights, seeds and schedule unchanged). If a weight is what raises "
        "its feature's alignment, S of that feature falls without it; the paired p compares each test image's S "
        "with every weight against its S without the feature's weight (one-sided Wilcoxon).",
    ]
    return _study_section("ablation", "Feature ablation", prose, table, "feature ablation", fig,
                          results, out)


def one_output_table(results: Dict[str, Any]) -> str:
    """The one- and two-output models side by side: accuracy, J, S and F against noise."""
    names = list(results["alignment"]["plain"]["S"])
    lines = ["| model | balanced accuracy | J (mean) | " + " | ".join(f"S({n}) / noise (p)" for n in names)
             + " | " + " | ".join(f"F({n}) / noise (p)" for n in names) + " |", "|---" * (3 + 2 * len(names)) + "|"]
    for label, r in _output_models(results).items():
        cells = " | ".join(f"{r[k][n]['mean']:.3g} / ×{r[k][n]['ratio']:.2g} ({p_cell(r[k][n]['p'])})"
                           for k in ("S", "F") for n in names)
        lines.append(f"| {label} | {r['balanced_accuracy']:.3f} | {pct(r['J_mean'])} | {cells} |")
    return "\n".join(lines)


def _output_models(results: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    two, one = results["alignment"], results["one_output"]
    return {"two outputs, λ = 0": two["plain"], "two outputs, regularized": two["regularized"],
            "one output, λ = 0": one["plain"], "one output, regularized": one["regularized"]}


def one_output_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    one = results["one_output"]
    models = {k.replace(", ", "\n"): v for k, v in _output_models(results).items()}
    fig = figures.one_output_figure(parts["one_output"], models, out / "figures" / "one_output.png")
    table = one_output_table(results)
    prose = [
        "The seed paper's f is a single logit: `SmallCNN(num_classes=1)`, trained with "
        f"{one['loss']} by {one['trainer']}, with the same data, initial seed, batches, schedule and "
        "regularizer weights as the two-output model. Its decision function is the logit itself (Captum's "
        "target None) and its flow's margin is the logit minus 0; the two-output model's f is the true class's "
        "logit and its flow's margin the logit difference. Noise as in section 1.",
    ]
    return _study_section("one_output", "The paper's one-output model", prose, table,
                          "one-output model against the noise baseline", fig, results, out)


def noise_table(study: Dict[str, Any], alpha: float = 0.05) -> str:
    """One row per construction and model: mean noise S, and each feature's ratio and p."""
    names = list(study["rows"][0]["models"]["plain"]["S"])
    lines = ["| noise construction | model | mean noise S | " + " | ".join(f"{n}: S / noise (p)" for n in names)
             + f" | features beating noise (p < {alpha}) |", "|---" * (4 + len(names)) + "|"]
    for row in study["rows"]:
        for model, label in (("plain", "λ = 0"), ("regularized", "regularized")):
            r = row["models"][model]
            cells = " | ".join(f"×{r['S'][n]['ratio']:.2g} ({p_cell(r['S'][n]['p'])})" for n in names)
            beat = ", ".join(n for n in names if (r["S"][n]["p"] or 1.0) < alpha) or "none"
            lines.append(f"| {row['construction']} | {label} | {r['noise_S_mean']:.3g} | {cells} | {beat} |")
    return "\n".join(lines)


def noise_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    study = results["noise"]
    fig = figures.noise_figure(study, out / "figures" / "noise_constructions.png")
    table = noise_table(study)
    how = [f"* **{row['construction']}** (`compare_to_noise` arguments: {row['arguments']}): {row['description']}"
           for row in study["rows"]]
    prose = [
        "A feature is used by the model when it beats random directions, and the verdict depends on how "
        f"those are drawn. The two models of section 1, the same test images and {study['n_noise']} noise "
        "directions drawn three ways by `make_noise`, each as the library states it:", "", *how, "",
        f"The label's rule uses {' and '.join(study['label_features'])} only: {study['decoy']} is a decoy, and a "
        "construction under which it beats noise flatters every feature. Noise over the whole image spreads over "
        "pixels no feature looks at, which lowers the baseline. Smoothed noise restricted to the mask but not "
        "centred shares the mask's mean direction, which is brightness' gradient, so its baseline rises with the "
        "model's use of brightness; the default removes each direction's in-mask mean (docs/noise_baseline.md "
        "has the measurements behind it). Every other section uses the default.",
    ]
    return _study_section("noise", "How the noise baseline moves the verdicts", prose, table,
                          "feature to noise ratio under each noise construction", fig, results, out)


def gad_table(gad: Dict[str, Any]) -> str:
    """RC and the RS comparison per method."""
    lines = ["| method | median RC | median regions (base → GAD) | RS(GAD) > RS(base − GAD) | "
             "median RS(GAD) | median RS(base − GAD) | paired p |", "|---|---|---|---|---|---|---|"]
    for name, m in gad["methods"].items():
        lines.append(f"| {name} | {m['median_rc']:.3f} | {m['median_regions_base']:g} → {m['median_regions_gad']:g} "
                     f"| {pct(m['frac_rs_gad_greater'])} | {m['median_rs_gad']:.3g} | {m['median_rs_rest']:.3g} "
                     f"| {p_cell(m['rs_paired_p'])} |")
    return "\n".join(lines)


def gad_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    gad, cfg = results["gad"], results["config"]
    figs = figures.gad_figures(parts["gad"], out / "figures")
    table = gad_table(gad)
    lines = [
        f"Digits {gad['classes'][0]} vs {gad['classes'][1]} (scikit-learn's bundled set, upsampled to "
        f"{cfg['digits_size']} px): {gad['n_train']} training images, balanced test accuracy "
        f"{gad['balanced_accuracy']:.3f}. {len(gad['alphas'])} support models (α = "
        f"{', '.join(f'{a:.2f}' for a in gad['alphas'])}; final regression MSE "
        f"{', '.join(f'{v:.2f}' for v in gad['support_final_loss'])}) are fitted once "
        f"({cfg['gad_epochs']} epochs, lr {cfg['gad_lr']:g}) and wrap each method. "
        f"On {gad['n_eval']} test images: RC = area of GAD's region hulls / area of the base map's (top 20% "
        "of pixels); RS = drop of the logit margin when the regions are filled with the image mean, per "
        "occluded fraction of the image, for GAD's regions and for the base regions GAD dropped. GAD keeps "
        "a subset of the base map's top pixels (agreement 1.0), so RC ≤ 1 by construction: what is "
        "informative is how much smaller it is, and whether what was kept matters more than what was "
        "dropped (RS).", "",
        table, "",
    ]
    for name in gad["methods"]:
        lines += [_link(f"{name} and GAD({name})", figs["gad_" + name], out), ""]
    return Section("GAD on real handwritten digits", "\n".join(lines), figs, {"table_gad.md": table})


def gad_sweep_table(sweep: Dict[str, Any]) -> str:
    """One row per (δ, method): kept fraction, RC, RS win rate and p, fit time."""
    delta = float(sweep["defaults"]["delta"])
    lines = ["| δ | method | median kept fraction | median RC | RS win rate | paired p | fit (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in sweep["rows"]:
        mark = " (default)" if float(r["delta"]) == delta else ""
        lines.append(f"| {r['delta']:g}{mark} | {r['method']} | {r['kept_fraction']:.3f} | {r['rc']:.3f} | "
                     f"{r['rs_win_rate']:.3f} | {p_cell(r['rs_p'])} | {r['fit_s']:.1f} |")
    return "\n".join(lines)


def _evidence_link(out: Path) -> str:
    doc = Path(__file__).resolve().parents[2] / "docs" / "gad_sweep.md"
    return f"[docs/gad_sweep.md]({os.path.relpath(doc, out.resolve())})" if doc.exists() else "docs/gad_sweep.md"


def gad_sweep_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    sweep, d = results["gad_sweep"], results["gad_sweep"]["defaults"]
    fig = figures.gad_sweep_figure(parts["gad_sweep"]["table"], sweep, out / "figures" / "gad_sweep.png")
    table = gad_sweep_table(sweep)
    fixed = sweep["fixed"]
    size = ("GAD's defaults" if sweep["at_defaults"] else
            f"GAD's defaults except T = {fixed['n_support']} support models and {fixed['steps']} steps (--quick)")
    prose = [
        f"GADWrapper's defaults (read from `GADConfig`): T = {d['n_support']} support models, δ = {d['delta']:g}, "
        f"Adam lr {d['lr']:g}, {d['steps']} optimizer steps per support model (batch {d['batch_size']}), "
        f"{'warm' if d['warm_start'] else 'cold'} start from the original weights. They were chosen from a sweep "
        "over three digit pairs, the synthetic lesions and three methods; the full evidence, including the "
        f"frontier where no setting met the targets, is in {_evidence_link(out)}. Here `gad_sweep` runs at demo "
        f"time on digits {sweep['classes'][0]} vs {sweep['classes'][1]} with the model of section "
        "\"GAD on real handwritten digits\": δ = " + ", ".join(f"{v:g}" for v in sweep["swept"]["delta"])
        + f", every other setting at {size}; fitted on the {sweep['n_fit']} training images, explained on "
        f"{sweep['n_eval']} test images (q = {sweep['q']:g}, agreement 1). The targets (issue 13): kept fraction "
        f"≤ {sweep['kept_max']:g} and RS win rate ≥ {sweep['win_min']:g} with p < {sweep['win_alpha']:g}.",
    ]
    return _study_section("gad_sweep", "GAD's settings: a sweep around the defaults", prose, table,
                          "GAD sweep: kept fraction against RS win rate", fig, results, out)


def volume_table(vol: Dict[str, Any]) -> str:
    """S and F against noise per feature on the volumes."""
    lines = ["| feature | in the label | mean S | S / noise | p (S) | mean F | F / noise | p (F) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in vol["S"]:
        used = "yes" if name == vol["rule"] else "no (decoy)"
        lines.append(f"| {name} | {used} | {_feature_cells(vol['S'][name])} | {_feature_cells(vol['F'][name])} |")
    lines.append(f"| noise (mean of {vol['n_noise']}) | | {vol['noise_S_mean']:.3g} | | | "
                 f"{vol['noise_F_mean']:.3g} | | |")
    return "\n".join(lines)


def volume_section(results: Dict[str, Any], parts: Dict[str, Any], out: Path) -> Section:
    vol, g = results["volumes"], results["volumes"]["gad"]
    figs = figures.volume_figures(parts["volumes"], out / "figures")
    table = volume_table(vol)
    s = vol["size"]
    body = "\n".join([
        f"`synthetic_lesions_3d`: {vol['n_train']} training and {vol['n_test']} test volumes of {s}×{s}×{s} voxels, "
        f"one ellipsoidal lesion each, labelled 1 for the brighter half (rule `{vol['rule']}`: extent and log "
        "aspect ratio are decoys). `SmallCNN3d` trained briefly: balanced test accuracy "
        f"{vol['balanced_accuracy']:.3f}. "
        "The built-in features work on volumes as on images (masked mean, radius of gyration with 3-D voxel "
        "coordinates, log of the largest over the smallest eigenvalue of the 3×3 covariance). Noise: the "
        f"library's default, for S: {vol['noise']['text']}; for F (first {vol['flow_examples']} test volumes): "
        f"{vol['noise']['flow_text']}. The flows reached the decision boundary on {pct(vol['flow_reached_boundary'])} "
        "of them.", "",
        "A decoy can beat noise without the label depending on it, when the model's gradient shares its "
        "pattern: extent's gradient is a radial profile over the mask (|r − c|² − R_g²), and a gradient shaped "
        "like the lesion's own intensity profile, what a detector of the lesion's total brightness has, "
        "carries that profile.", "",
        table, "", _link("alignment against noise on volumes", figs["volume_alignment"], out), "",
        f"GAD(Saliency) with {g['n_support']} support models ({g['steps']} steps each) fitted on the training "
        f"volumes; regions are the convex hulls of the 26-connected components of each map's top 20% voxels. "
        f"Median RC (GAD's hull volume over Saliency's) on the test volumes: {g['median_rc']:.3f}; median regions "
        f"{g['median_regions_base']:g} → {g['median_regions_gad']:g}; median hull volume "
        f"{g['median_volume_base']:.0f} → {g['median_volume_gad']:.0f} voxels. The figure shows one test volume: "
        "three orthogonal slices through the Saliency map's maximum, with the hulls' cross-sections outlined.", "",
        _link("Saliency and GAD(Saliency) on a volume", figs["volume_gad"], out), "",
        verdict_table(results["claims"], "volumes"), "",
    ])
    return Section("Volumes: a 3-D CNN on CT-like lesions", body, figs, {"table_volumes.md": table})


SectionFunction = Callable[[Dict[str, Any], Dict[str, Any], Path], Section]

#: (results key, section function) in report order; a section is written when its key is present.
SECTIONS: List[Tuple[str, SectionFunction]] = [
    ("alignment", alignment_section),
    ("lambda_sweep", lambda_sweep_section),
    ("ablation", ablation_section),
    ("one_output", one_output_section),
    ("noise", noise_section),
    ("gad", gad_section),
    ("gad_sweep", gad_sweep_section),
    ("volumes", volume_section),
]
