"""captum_gradflow: feature gradient flow, alignment regularizer, GAD and region metrics.

Public names only; each lives in the module named after it.
"""
from captum_gradflow.datasets import DigitsSplit, Lesions, digits_pair, synthetic_lesions
from captum_gradflow.features import (
    Brightness,
    Extent,
    Feature,
    LinearFeature,
    LogAspectRatio,
    NoiseFeature,
    noise_features,
)
from captum_gradflow.models import SmallCNN
from captum_gradflow.training import TrainHistory, balanced_accuracy, predict, train_classifier

__version__ = "0.1.0"

__all__ = [
    "Brightness",
    "DigitsSplit",
    "Extent",
    "Feature",
    "Lesions",
    "LinearFeature",
    "LogAspectRatio",
    "NoiseFeature",
    "SmallCNN",
    "TrainHistory",
    "balanced_accuracy",
    "predict",
    "train_classifier",
    "digits_pair",
    "noise_features",
    "synthetic_lesions",
]
