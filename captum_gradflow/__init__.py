"""captum_gradflow: feature gradient flow, alignment regularizer, GAD and region metrics.

Public names only; each lives in the module named after it.
"""
from captum_gradflow.adapters import ZennitAttribution, quantus_explain
from captum_gradflow.alignment import FeatureAlignment
from captum_gradflow.alignment_penalty import alignment_penalty
from captum_gradflow.datasets import (
    DigitsSplit,
    Lesions,
    digits_pair,
    synthetic_lesions,
    synthetic_lesions_3d,
)
from captum_gradflow.evaluate import evaluate
from captum_gradflow.gad import GADConfig, GADWrapper, gad_sweep
from captum_gradflow.features import (
    Brightness,
    Extent,
    Feature,
    LinearFeature,
    LogAspectRatio,
    NoiseFeature,
    noise_features,
)
from captum_gradflow.flow import FlowResult, GradientFlowAlignment
from captum_gradflow.metrics import (
    RegionComplexity,
    Regions,
    RegionSensitivity,
    RegionSensitivityComparison,
    VolumeRegions,
    attribution_regions,
    compare_region_sensitivity,
    region_complexity,
    region_sensitivity,
)
from captum_gradflow.models import SmallCNN, SmallCNN3d
from captum_gradflow.noise import NoiseComparison, NoiseSet, make_noise
from captum_gradflow.regularizer import AlignmentRegularizer
from captum_gradflow.visualization import plot_gad_sweep
from captum_gradflow.training import TrainHistory, balanced_accuracy, predict, train_classifier

__version__ = "0.1.0"

__all__ = [
    "AlignmentRegularizer",
    "Brightness",
    "DigitsSplit",
    "Extent",
    "Feature",
    "FeatureAlignment",
    "FlowResult",
    "GADConfig",
    "GADWrapper",
    "GradientFlowAlignment",
    "Lesions",
    "LinearFeature",
    "LogAspectRatio",
    "NoiseComparison",
    "NoiseFeature",
    "NoiseSet",
    "RegionComplexity",
    "RegionSensitivity",
    "RegionSensitivityComparison",
    "Regions",
    "SmallCNN",
    "SmallCNN3d",
    "TrainHistory",
    "VolumeRegions",
    "ZennitAttribution",
    "balanced_accuracy",
    "predict",
    "train_classifier",
    "alignment_penalty",
    "attribution_regions",
    "compare_region_sensitivity",
    "digits_pair",
    "evaluate",
    "gad_sweep",
    "make_noise",
    "noise_features",
    "plot_gad_sweep",
    "quantus_explain",
    "region_complexity",
    "region_sensitivity",
    "synthetic_lesions",
    "synthetic_lesions_3d",
]
