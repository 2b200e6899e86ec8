"""Adapters to the neighbouring libraries: Zennit attributors as Captum attributions, and
this package's attributions as Quantus ``explain_func``.

zennit and quantus are imported lazily, only when used: importing them pulls torchvision,
which cannot load on every machine.
"""
from __future__ import annotations
