"""Test recipe: the lesions recipe with a GAD wrapper fitted in the recipe (one support model)."""
from captum.attr import Saliency

from captum_gradflow import GADWrapper
from lesions import LesionItems, dataset, features, model  # noqa: F401 - the recipe's functions


def gad(model):
    d = LesionItems().data
    return GADWrapper(Saliency(model), n_support=1, epochs=1, lr=1e-3, progress=False).fit((d.images, d.labels))
