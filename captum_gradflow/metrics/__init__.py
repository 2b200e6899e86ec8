"""Region metrics (DESIGN 4): convex-hull attribution regions, region complexity (RC) and
region sensitivity (RS), with the paired RS comparison of GAD against its base method."""
from captum_gradflow.metrics.complexity import RegionComplexity, region_complexity
from captum_gradflow.metrics.regions import Regions, attribution_regions, reduce_channels
from captum_gradflow.metrics.sensitivity import (
    RegionSensitivity,
    RegionSensitivityComparison,
    compare_region_sensitivity,
    region_sensitivity,
)

__all__ = [
    "RegionComplexity",
    "RegionSensitivity",
    "RegionSensitivityComparison",
    "Regions",
    "attribution_regions",
    "compare_region_sensitivity",
    "reduce_channels",
    "region_complexity",
    "region_sensitivity",
]
