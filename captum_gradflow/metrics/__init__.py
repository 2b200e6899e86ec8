"""Region metrics (DESIGN 4): attribution regions, region complexity (RC), region sensitivity (RS)."""
from captum_gradflow.metrics.regions import Regions, attribution_regions, reduce_channels

__all__ = ["Regions", "attribution_regions", "reduce_channels"]
