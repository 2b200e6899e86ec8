"""Matplotlib figures for attributions, region hulls, gradient flows and alignment tests.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, so it
is safe under the Agg backend, in threads and in notebooks), returns it, and never calls
``show``. Save with :func:`save_figure`, which also releases the figure's memory.

Images are drawn as they are; volumes ``(C, D, H, W)`` as three orthogonal slices through
the attribution's maximum (``view="orthogonal"``, the default) or as a montage of slices
along depth (``view="montage"``), with each region hull's cross-section outlined.
"""
from captum_gradflow.visualization._common import save_figure
from captum_gradflow.visualization.alignment import plot_alignment_vs_noise
from captum_gradflow.visualization.attribution import plot_attribution, plot_gad_comparison
from captum_gradflow.visualization.flow import plot_flow
from captum_gradflow.visualization.sweep import plot_gad_sweep

__all__ = [
    "plot_attribution",
    "plot_gad_comparison",
    "plot_flow",
    "plot_alignment_vs_noise",
    "plot_gad_sweep",
    "save_figure",
]
