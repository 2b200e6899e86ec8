"""The end-to-end demo behind ``python -m captum_gradflow demo``: both seed papers' experiments.

Part 1 (feature gradient flow) trains the small CNN on synthetic lesions with and without the
alignment regularizer and measures, on the test split, the joint alignment ``J`` (the
fraction of the gradient the features explain), each feature's pointwise alignment ``S``
and flow alignment ``F`` against a noise baseline, and balanced accuracy; then the paper's
next checks: a λ sweep (accuracy against alignment), a feature ablation (each weight removed
in turn) and the paper's one-output model. Part 2 (GAD) trains the CNN on a real pair of
handwritten digits, fits GAD support models once, wraps Integrated Gradients, Saliency and
Input x Gradient with them, and measures region complexity (RC) and region sensitivity
(RS); a small ``gad_sweep`` around GAD's defaults shows the trade-off they were chosen on.
Part 3 repeats both on volumes: a 3-D CNN on CT-like lesions labelled by brightness. Every
number is computed here; the report says whether each claim of the papers held on this data
by comparing those numbers.

Modules: :mod:`.config` (sizes), :mod:`.lesions`, :mod:`.studies` and :mod:`.noise_study`
(lesion experiments), :mod:`.gad_digits` and :mod:`.gad_settings` (GAD), :mod:`.volumes`
(3-D), :mod:`.claims` (verdicts), :mod:`.figures`, :mod:`.sections` and
:mod:`.report` (the report), :mod:`.run` (:func:`run_demo`). An experiment is one entry of
:data:`~captum_gradflow.demo.run.EXPERIMENTS`, its verdicts one entry of
:data:`~captum_gradflow.demo.claims.CLAIMS` and its report section one entry of
:data:`~captum_gradflow.demo.sections.SECTIONS`.
"""
from __future__ import annotations

from .claims import evaluate_claims
from .config import DemoConfig
from .run import run_demo

__all__ = ["DemoConfig", "evaluate_claims", "run_demo"]
