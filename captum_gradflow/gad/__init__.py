"""GAD, Gradient Artificial Distancing (docs/definitions.md, section 3): support models with
class logits pushed apart, explained with the same Captum method, fused into the consistent
part of the map.

``distancing`` builds the regression targets (Algorithm 1), ``support`` trains the support
models and re-binds methods to them, ``fusion`` combines the maps (Algorithm 2) and
``wrapper`` holds :class:`GADWrapper`, the user-facing Captum attribution; ``config``
its validated settings, ``persistence`` its checksummed save files and ``sweep`` the
evidence behind its defaults.
"""
from captum_gradflow.gad.config import GADConfig
from captum_gradflow.gad.distancing import DistancingPlan, default_alphas, make_plan
from captum_gradflow.gad.fusion import FusionResult, consistency_mask, fuse_maps
from captum_gradflow.gad.support import make_support_models, rebind, train_support_model
from captum_gradflow.gad.wrapper import GADComponents, GADWrapper
from captum_gradflow.gad.persistence import model_digest, tensor_digest
from captum_gradflow.gad.sweep import evaluate_gad, gad_sweep
from captum_gradflow.maps import normalize_per_example, reduce_channels, top_q_mask

__all__ = [
    "DistancingPlan",
    "GADConfig",
    "FusionResult",
    "GADComponents",
    "GADWrapper",
    "consistency_mask",
    "default_alphas",
    "evaluate_gad",
    "fuse_maps",
    "gad_sweep",
    "make_plan",
    "make_support_models",
    "model_digest",
    "normalize_per_example",
    "rebind",
    "reduce_channels",
    "tensor_digest",
    "top_q_mask",
    "train_support_model",
]
