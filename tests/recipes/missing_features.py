"""Bad test recipe: no features()."""
from lesions import dataset, model  # noqa: F401
