"""Region metrics (docs/definitions.md, section 4): convex-hull attribution regions of images and
volumes, region complexity (RC) and region sensitivity (RS), with the paired RS comparison of
GAD against its base method. ``reduce_channels`` is :func:`captum_gradflow.maps.reduce_channels`."""
from captum_gradflow.metrics.complexity import RegionComplexity, region_complexity
from captum_gradflow.maps import reduce_channels
from captum_gradflow.metrics.regions import Regions, attribution_regions
from captum_gradflow.metrics.volume_regions import VolumeRegions
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
    "VolumeRegions",
    "attribution_regions",
    "compare_region_sensitivity",
    "reduce_channels",
    "region_complexity",
    "region_sensitivity",
]
