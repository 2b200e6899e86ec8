"""GAD, Gradient Artificial Distancing (DESIGN 3): support models with class logits pushed
apart, explained with the same Captum method, fused into the consistent part of the map.

``distancing`` builds the regression targets (Algorithm 1), ``support`` trains the support
models and re-binds methods to them, ``fusion`` combines the maps (Algorithm 2) and
``wrapper`` holds :class:`GADWrapper`, the user-facing Captum attribution.
"""
from captum_gradflow.gad.distancing import DistancingPlan, default_alphas, make_plan
from captum_gradflow.gad.fusion import (
    FusionResult,
    consistency_mask,
    fuse_maps,
    normalize_per_example,
    reduce_channels,
    top_q_mask,
)
from captum_gradflow.gad.support import make_support_models, rebind, train_support_model
from captum_gradflow.gad.wrapper import GADComponents, GADWrapper

__all__ = [
    "DistancingPlan",
    "FusionResult",
    "GADComponents",
    "GADWrapper",
    "consistency_mask",
    "default_alphas",
    "fuse_maps",
    "make_plan",
    "make_support_models",
    "normalize_per_example",
    "rebind",
    "reduce_channels",
    "top_q_mask",
    "train_support_model",
]
