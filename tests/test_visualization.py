"""Tests of captum_gradflow.visualization: axes and artists, PNG output, coordinates, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Polygon as PolygonPatch
from shapely.geometry import MultiPolygon, box

from captum_gradflow.visualization import (
    plot_alignment_vs_noise,
    plot_attribution,
    plot_flow,
    plot_gad_comparison,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _patches(ax):
    return [p for p in ax.patches if isinstance(p, PolygonPatch)]


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000


def test_attribution_overlay_axes_colorbar_and_png(tmp_path):
    x, attr = torch.rand(1, 12, 20), torch.randn(1, 12, 20)
    fig = plot_attribution(x, attr, polygons=[box(2, 3, 5, 7), [(10, 1), (14, 1), (12, 6)]], title="sal")
    assert isinstance(fig, Figure)
    ax, cbar = fig.axes
    assert ax.get_title() == "sal"
    assert cbar.get_ylabel() == "|attribution|"
    assert len(ax.images) == 2  # image + heat map
    assert len(_patches(ax)) == 2
    out = save_figure(fig, tmp_path / "a" / "attr.png")
    assert _is_png(out)


def test_hulls_are_drawn_in_pixel_coordinates_of_the_heatmap():
    # One hot pixel at row 3, column 5 of a 8 x 10 image: its square is [5, 6] x [3, 4].
    attr = torch.zeros(8, 10)
    attr[3, 5] = 1.0
    square = box(5, 3, 6, 4)
    fig = plot_attribution(torch.zeros(8, 10), attr, polygons=square)
    ax = fig.axes[0]
    for im in ax.images:
        assert tuple(im.get_extent()) == (0, 10, 8, 0)
    assert ax.get_xlim() == (0, 10) and ax.get_ylim() == (8, 0)
    (patch,) = _patches(ax)
    verts = patch.get_xy()
    assert verts[:, 0].min() == 5 and verts[:, 0].max() == 6
    assert verts[:, 1].min() == 3 and verts[:, 1].max() == 4
    # The heat map's only visible pixel maps to the same display box as the hull.
    heat = ax.images[1].get_array()
    assert int((~np.ma.getmaskarray(heat)).sum()) == 1 and not np.ma.getmaskarray(heat)[3, 5]
    pixel_box = ax.transData.transform([(5, 3), (6, 4)])
    hull_box = ax.transData.transform([(verts[:, 0].min(), verts[:, 1].min()),
                                       (verts[:, 0].max(), verts[:, 1].max())])
    np.testing.assert_allclose(pixel_box, hull_box)


def test_multipolygon_and_signed_maps():
    fig = plot_attribution(torch.rand(3, 8, 8), torch.randn(3, 8, 8),
                           polygons=MultiPolygon([box(0, 0, 2, 2), box(4, 4, 6, 7)]), sign="all")
    ax, cbar = fig.axes
    assert len(_patches(ax)) == 2
    lo, hi = ax.images[1].get_clim()
    assert lo == -hi < 0  # diverging scale centred on 0


def test_attribution_errors():
    with pytest.raises(ValueError, match="reduces to shape"):
        plot_attribution(torch.rand(8, 8), torch.rand(9, 8))
    with pytest.raises(ValueError, match="sign"):
        plot_attribution(torch.rand(8, 8), torch.rand(8, 8), sign="both")
    with pytest.raises(TypeError, match="polygons"):
        plot_attribution(torch.rand(8, 8), torch.rand(8, 8), polygons=3.5)
    with pytest.raises(ValueError, match="NaN"):
        plot_attribution(torch.full((8, 8), float("nan")), torch.rand(8, 8))


def test_gad_comparison_rows_shared_scale_and_png(tmp_path):
    x = torch.rand(3, 1, 16, 16)
    base = torch.randn(3, 1, 16, 16)
    gad = base * (base.abs() > 1.2)
    hulls = [[box(1, 1, 4, 4)], [], None]
    fig = plot_gad_comparison(x, base, gad, base_polygons=hulls, gad_polygons=hulls,
                              method="IG", row_labels=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3 + 3  # 9 image panels and one colour bar per row
    assert fig.axes[1].get_title() == "IG (256 px)"
    kept = int((gad[0] != 0).sum())
    assert fig.axes[2].get_title() == f"GAD(IG) ({kept} px)"
    assert fig.axes[1].images[1].get_clim() == fig.axes[2].images[1].get_clim()
    assert len(_patches(fig.axes[1])) == 1 and len(_patches(fig.axes[4])) == 0
    assert [fig.axes[3 * i].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    assert _is_png(save_figure(fig, tmp_path / "gad.png"))


def test_gad_comparison_errors():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="shape of images"):
        plot_gad_comparison(x, x, x[:1])
    with pytest.raises(ValueError, match="base_polygons has 1 entries"):
        plot_gad_comparison(x, x, x, base_polygons=[[]])


def test_flow_strip_frames_lines_and_png(tmp_path):
    t = 11
    path = torch.stack([torch.full((1, 8, 8), 0.1 * k) for k in range(t)])
    s = torch.linspace(0, 2, t)
    fig = plot_flow(path, s, {"brightness": torch.linspace(0.1, 0.6, t), "extent": torch.rand(t)},
                    margin=torch.linspace(2, 0, t), n_frames=4, reached_boundary=True)
    titles = [a.get_title() for a in fig.axes]
    assert titles[0] == "input\ns = 0.00"
    assert titles[3] == "on boundary\ns = 2.00"
    assert titles[4] == "end − input"
    line_axes = [a for a in fig.axes if a.lines]
    assert {a.get_xlabel() for a in line_axes} >= {"arc length s"}
    labels = [ln.get_label() for a in line_axes for ln in a.lines]
    assert {"brightness", "extent", "margin m"} <= set(labels)
    # 4 frames + difference (colour bar inset) + S axes + margin twin axes
    assert len(fig.axes) == 7
    assert len(fig.axes[4].child_axes) == 1
    assert _is_png(save_figure(fig, tmp_path / "flow.png"))


def test_flow_without_lines_and_errors():
    fig = plot_flow(torch.rand(3, 8, 8))
    assert len(fig.axes) == 3 + 1  # 3 frames (T = 3) and the difference
    with pytest.raises(ValueError, match="T >= 2"):
        plot_flow(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="arc_length has 2 values"):
        plot_flow(torch.rand(3, 1, 8, 8), arc_length=torch.rand(2))
    with pytest.raises(ValueError, match="alignment for 'g' has 4 values"):
        plot_flow(torch.rand(3, 1, 8, 8), alignment={"g": torch.rand(4)})


def test_alignment_bars_noise_and_p_values(tmp_path):
    s = {"brightness": torch.rand(20) * 0.1 + 0.01,
         "extent": torch.cat([torch.rand(18) * 0.01, torch.full((2,), float("nan"))])}
    noise = torch.rand(20, 16) * 1e-3
    fig = plot_alignment_vs_noise(s, noise, p_values={"brightness": 1e-5, "extent": 0.3})
    (ax,) = fig.axes
    bars = [p for p in ax.patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 2
    np.testing.assert_allclose(bars[0].get_height(), float(s["brightness"].mean()), rtol=1e-6)
    np.testing.assert_allclose(bars[1].get_height(), float(np.nanmean(s["extent"].numpy())), rtol=1e-6)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["p < 0.001", "p = 0.3"]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["brightness", "extent\n(2 NaN)", "noise\n(M=16)"]
    assert ax.get_yscale() == "log"
    (dots,) = [c for c in ax.collections if c.get_label() == "noise directions"]
    assert dots.get_offsets().shape == (16, 2)  # one dot per noise direction
    assert _is_png(save_figure(fig, tmp_path / "bars.png"))


def test_alignment_bars_array_input_and_errors():
    fig = plot_alignment_vs_noise(np.random.rand(10, 3), np.random.rand(10, 4), feature_names=list("abc"),
                                  log_scale=False)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:3] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="feature_names has 2 names"):
        plot_alignment_vs_noise(np.random.rand(10, 3), np.random.rand(10, 4), feature_names=["a", "b"])
    with pytest.raises(ValueError, match="p_values has 1 values"):
        plot_alignment_vs_noise(np.random.rand(10, 3), np.random.rand(10, 4), p_values=[0.1])
    with pytest.raises(ValueError, match=r"feature_scores must be \(N, m\) or \(m,\) with m >= 1"):
        plot_alignment_vs_noise(np.random.rand(2, 3, 4), np.random.rand(10, 4))
    with pytest.raises(ValueError, match=r"noise_scores must be \(N, M\) or \(M,\) with M >= 1"):
        plot_alignment_vs_noise(np.random.rand(10, 3), np.zeros((10, 0)))
    with pytest.raises(TypeError, match="Figure"):
        save_figure("not a figure", "x.png")


# -- volumes ---------------------------------------------------------------------------------
def _volume_case():
    from captum_gradflow.metrics import attribution_regions

    x = torch.rand(2, 1, 10, 12, 14, generator=torch.Generator().manual_seed(0))
    attr = torch.zeros(2, 1, 10, 12, 14)
    attr[:, :, 2:5, 3:7, 4:9] = 1.0  # a box of 3 x 4 x 5 voxels
    attr[:, :, 3, 5, 6] = 2.0  # the maximum, inside the box
    return x, attr, attribution_regions(attr, threshold=0.0)


def test_volume_attribution_orthogonal_slices_with_hull_sections(tmp_path):
    x, attr, regions = _volume_case()
    fig = plot_attribution(x[0], attr[0], polygons=regions.hulls[0], title="sal")
    assert len(fig.axes) == 3 + 1  # three slices and the colour bar
    assert [a.get_title() for a in fig.axes[:3]] == ["sal: z = 3", "sal: y = 5", "sal: x = 6"]
    outlines = [_patches(a) for a in fig.axes[:3]]
    assert all(len(p) == 1 for p in outlines)
    # the box's cross-section at z = 3.5 is the rectangle of columns 4..9 and rows 3..7
    ring = outlines[0][0].get_xy()
    assert ring[:, 0].min() == 4 and ring[:, 0].max() == 9
    assert ring[:, 1].min() == 3 and ring[:, 1].max() == 7
    # the y slice shows (x = column, z = row)
    ring = outlines[1][0].get_xy()
    assert ring[:, 0].min() == 4 and ring[:, 0].max() == 9 and ring[:, 1].max() == 5
    assert _is_png(save_figure(fig, tmp_path / "vol.png"))


def test_volume_montage_misses_the_hull_where_slices_do_not_cut_it():
    x, attr, regions = _volume_case()
    fig = plot_attribution(x[:1], attr[:1], polygons=regions.hulls[0], view="montage", n_slices=5)
    titles = [a.get_title() for a in fig.axes[:-1]]
    assert titles == [f"attribution: z = {z}" for z in (0, 2, 4, 7, 9)]
    assert [len(_patches(a)) for a in fig.axes[:-1]] == [0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="view must be one of"):
        plot_attribution(x[0], attr[0], view="sideways")
    with pytest.raises(ValueError, match="several slices"):
        plot_attribution(x[0], attr[0], ax=Figure().add_subplot())


def test_volume_gad_comparison_and_flow():
    x, attr, regions = _volume_case()
    gad = attr * (attr > 1)
    fig = plot_gad_comparison(x, attr, gad, base_polygons=regions, gad_polygons=regions,
                              row_labels=["a", "b"])
    assert len(fig.axes) == 2 * 3 * 3 + 2 * 3  # 3 slices x 2 volumes, each a row of 3 + bar
    assert fig.axes[0].get_ylabel() == "a, z = 3"
    assert len(_patches(fig.axes[1])) == 1
    path = torch.stack([x[0] + 0.1 * k * attr[0] for k in range(6)])
    fig = plot_flow(path, torch.linspace(0, 1, 6), {"brightness": torch.rand(6)}, n_frames=3)
    assert len(fig.axes) == 3 * 4 + 1  # three strips of 3 frames and the change, the lines
    with pytest.raises(ValueError, match="base_polygons has 1 entries"):
        plot_gad_comparison(x, attr, gad, base_polygons=[[]])
