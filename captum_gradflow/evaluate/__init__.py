"""Dataset-scale evaluation (tutorials/06_dataset_evaluation.ipynb): a recipe run on one process or
many (``torchrun``), streamed to checksummed part files, resumable, merged into one table."""
from captum_gradflow.evaluate.api import evaluate
from captum_gradflow.evaluate.recipe import Recipe, load_recipe

__all__ = ["Recipe", "evaluate", "load_recipe"]
