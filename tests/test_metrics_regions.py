"""attribution_regions: exact hull geometry on hand-made maps, batching, and bad input."""
import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import label

from captum_gradflow.metrics import Regions, attribution_regions, reduce_channels
from captum_gradflow.metrics import _hulls, _trapezoids
from captum_gradflow.metrics import regions as regions_module


def canvas(*pixels, size=(12, 12)):
    """A (1, 1, H, W) map with value 1 at the given (row, col) pixels."""
    a = torch.zeros(1, 1, *size)
    for r, c in pixels:
        a[0, 0, r, c] = 1.0
    return a


def brute_force_hulls(kept: np.ndarray, connectivity: int):
    """Shapely reference: hull of the union of each component's pixel squares."""
    lab = label(kept, connectivity=connectivity)
    hulls = []
    for k in range(1, lab.max() + 1):
        rows, cols = np.nonzero(lab == k)
        squares = shapely.box(cols, rows, cols + 1, rows + 1)
        hulls.append(shapely.convex_hull(shapely.union_all(squares)))
    return hulls


def test_filled_square_is_one_region_of_its_area():
    a = torch.zeros(1, 1, 16, 16)
    a[0, 0, 3:7, 5:9] = 2.0
    r = attribution_regions(a, threshold=0.0)
    assert r.n_regions.tolist() == [1]
    assert r.area.tolist() == [16.0]
    assert r.polygons[0][0].equals(shapely.box(5, 3, 9, 7))
    assert torch.equal(r.mask[0], r.kept[0]) and int(r.kept.sum()) == 16


def test_two_separate_squares_are_two_regions():
    a = torch.zeros(1, 1, 16, 16)
    a[0, 0, 1:3, 1:3] = 1.0
    a[0, 0, 10:13, 9:12] = 1.0
    r = attribution_regions(a, threshold=0.0)
    assert r.n_regions.tolist() == [2]
    assert r.area.tolist() == [4.0 + 9.0]
    assert sorted(p.area for p in r.polygons[0]) == [4.0, 9.0]


def test_l_shape_hull_is_larger_than_its_pixels():
    # a column of 3 and a row of 3 sharing the corner: 5 pixels, hull 3x3 minus a triangle of 2
    a = canvas((0, 0), (1, 0), (2, 0), (2, 1), (2, 2))
    r = attribution_regions(a, threshold=0.0)
    assert r.n_regions.tolist() == [1]
    assert r.area.item() == 7.0
    assert int(r.kept.sum()) == 5
    # the rasterised hull takes the pixel whose centre lies on the diagonal edge
    assert bool(r.mask[0, 1, 1]) and not bool(r.mask[0, 0, 2])


def test_small_l_hull_area():
    r = attribution_regions(canvas((1, 1), (2, 1), (2, 2)), threshold=0.0)
    assert r.area.item() == 3.5


def test_single_pixel_is_a_unit_square_never_zero():
    r = attribution_regions(canvas((4, 7)), threshold=0.0)
    assert r.area.item() == 1.0
    assert r.polygons[0][0].equals(shapely.box(7, 4, 8, 5))


@pytest.mark.parametrize(
    "pixels, area",
    [
        ([(5, c) for c in range(2, 9)], 7.0),  # horizontal line
        ([(r, 3) for r in range(1, 5)], 4.0),  # vertical line
        ([(i, i) for i in range(4)], 7.0),  # diagonal line: 4x4 box minus two 3x3/2 triangles
    ],
)
def test_one_pixel_wide_lines_have_their_true_area(pixels, area):
    r = attribution_regions(canvas(*pixels), threshold=0.0)
    assert r.n_regions.tolist() == [1]
    assert r.area.item() == area


def test_ring_hull_fills_the_hole():
    a = torch.zeros(1, 1, 9, 9)
    a[0, 0, 2:7, 2:7] = 1.0
    a[0, 0, 3:6, 3:6] = 0.0
    r = attribution_regions(a, threshold=0.0)
    assert r.n_regions.tolist() == [1]
    assert r.area.item() == 25.0
    assert int(r.kept.sum()) == 16
    assert bool(r.mask[0, 4, 4]) and int(r.mask.sum()) == 25


def test_connectivity_decides_whether_diagonal_pixels_join():
    a = canvas((2, 2), (3, 3))
    assert attribution_regions(a, threshold=0.0, connectivity=2).n_regions.item() == 1
    four = attribution_regions(a, threshold=0.0, connectivity=1)
    assert four.n_regions.item() == 2 and four.area.item() == 2.0


def test_min_size_drops_small_components():
    a = torch.zeros(1, 1, 10, 10)
    a[0, 0, 1:4, 1:4] = 1.0
    a[0, 0, 8, 8] = 1.0
    r = attribution_regions(a, threshold=0.0, min_size=2)
    assert r.n_regions.item() == 1 and r.area.item() == 9.0
    assert not bool(r.kept[0, 8, 8])


def test_top_q_keeps_that_fraction_and_never_zero_pixels():
    a = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10)  # 0 .. 99, one zero
    r = attribution_regions(a, q=0.25)
    assert int(r.kept.sum()) == 25
    assert bool(r.kept[0, 9, 9]) and not bool(r.kept[0, 0, 0])
    sparse = torch.zeros(1, 1, 10, 10)
    sparse[0, 0, 4, 4:7] = torch.tensor([1.0, 2.0, 3.0])
    r = attribution_regions(sparse, q=0.5)  # top half would include zeros: only the 3 kept
    assert int(r.kept.sum()) == 3 and r.area.item() == 3.0


def test_ties_at_the_cut_are_all_kept():
    a = torch.ones(1, 1, 4, 4)
    a[0, 0, 0, 0] = 2.0
    r = attribution_regions(a, q=0.25)  # k = 4, but 15 pixels tie at the cut
    assert int(r.kept.sum()) == 16


def test_channels_are_reduced_by_sum_of_absolute_values():
    a = torch.zeros(1, 3, 6, 6)
    a[0, 0, 1, 1], a[0, 1, 1, 1] = 1.0, -1.0  # cancels with a signed sum
    a[0, 2, 4, 4] = 0.5
    assert attribution_regions(a, threshold=0.0).n_regions.item() == 2
    assert attribution_regions(a, threshold=0.0, reduce="sum").n_regions.item() == 1
    assert reduce_channels(a)[0, 1, 1].item() == 2.0
    assert attribution_regions(a, threshold=0.0, reduce=lambda t: t[:, 2]).n_regions.item() == 1


def test_batched_equals_one_by_one_and_indexing(monkeypatch):
    monkeypatch.setattr(regions_module, "CHUNK_PIXELS", 16 * 14 * 11)  # passes of 16 maps
    torch.manual_seed(0)
    a = torch.randn(20, 2, 14, 11)
    batch = attribution_regions(a, q=0.3)
    for i in (0, 1, 2, 3, 15, 16, 19):
        one = attribution_regions(a[i:i + 1], q=0.3)
        assert torch.equal(one.area, batch.area[i:i + 1])
        assert torch.equal(one.mask, batch.mask[i:i + 1])
        assert torch.equal(batch[i].mask, one.mask)
        assert [p.wkt for p in one.polygons[0]] == [p.wkt for p in batch[i].polygons[0]]
    part = batch[1:3]
    assert isinstance(part, Regions) and len(part) == 2
    assert torch.equal(part.kept, batch.kept[1:3])
    with pytest.raises(IndexError):
        batch[20]


def test_matches_shapely_brute_force_including_overlapping_hulls(monkeypatch):
    monkeypatch.setattr(regions_module, "CHUNK_PIXELS", 16 * 30 * 27)  # passes of 16 maps
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.standard_normal((18, 1, 30, 27)))  # noise: many hulls overlap
    for connectivity in (1, 2):
        r = attribution_regions(a, q=0.35, connectivity=connectivity)
        yy, xx = np.mgrid[0:30, 0:27] + 0.5
        for i in (0, 1, 2, 15, 16, 17):  # both passes of the hull computation
            hulls = brute_force_hulls(r.kept[i].numpy(), connectivity)
            assert r.n_regions[i].item() == len(hulls)
            assert r.area[i].item() == pytest.approx(shapely.union_all(hulls).area, abs=1e-9)
            assert r.unions[i].area == pytest.approx(r.area[i].item(), abs=1e-9)
            assert all(p.equals(h) for p, h in zip(r.polygons[i], hulls))
            raster = np.zeros((30, 27), dtype=bool)
            for h in hulls:
                raster |= shapely.intersects_xy(h, xx, yy)
            assert np.array_equal(raster, r.mask[i].numpy())


def labelled_chunk(seed: int, connectivity: int):
    """Labels of a few maps mixing pixel noise (tiny components) and smoothed noise (large
    blobs whose hulls need several removal passes), stacked as ``attribution_regions`` does."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = np.abs(rng.standard_normal((4, 36, 33)))
    noise[2:] = gaussian_filter(noise[2:], sigma=(0, 1.5, 1.5))
    kept, _ = regions_module.keep_pixels(noise.astype(np.float32), 0.3, None)
    return regions_module._label(kept, connectivity, 1)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_hull_vertices_and_areas_match_shapely_one_by_one(connectivity):
    labels, inside, n = labelled_chunk(7, connectivity)
    chunk, _, _ = _hulls.component_hulls(labels, inside, n)
    hulls = chunk.vertices()
    ours = hulls.polygons(np.arange(n), np.zeros(n, dtype=np.int64))
    lab = labels[:, 1:-1]
    for k in range(1, n + 1):
        rows, cols = np.nonzero(lab == k)
        ref = shapely.convex_hull(shapely.union_all(shapely.box(cols, rows, cols + 1, rows + 1)))
        assert hulls.area2[k - 1] == 2 * ref.area  # exact: integer vertices
        # the same vertices (collinear points removed), not merely the same shape
        assert set(ours[k - 1].exterior.coords) == set(ref.exterior.coords)
    assert n > 100 and (np.bincount(lab.ravel())[1:] > 20).sum() >= 5  # tiny and large


def test_row_edges_without_removal_take_the_general_path_result():
    labels, inside, n = labelled_chunk(8, 2)
    rows, left, right, _ = _hulls._rows_and_chains(labels, inside, n)
    for chain in (left, right):
        assert not chain.alive.all()  # the general path has work to do
        whole = _hulls.Chain(chain.top, chain.bottom, np.ones_like(chain.alive))
        fast = _hulls._boundary_rows(whole, rows)
        general = _hulls._edges_over_rows(whole, rows)
        for a, b in zip(fast, general):
            assert np.array_equal(a, b)


def test_overlap_candidates_find_every_overlapping_pair():
    labels, inside, n = labelled_chunk(9, 2)
    _, t, by_row = _hulls.component_hulls(labels, inside, n)
    a, b = _trapezoids.overlapping_pairs(t, by_row)
    i, j = np.triu_indices(len(t.hull), 1)  # brute force: every pair of one row
    same = t.row[i] == t.row[j]
    i, j = i[same], j[same]
    hit = _trapezoids._trapezoids_overlap(t, i, j)
    expected = set(zip(i[hit].tolist(), j[hit].tolist()))
    found = set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))
    assert found == expected and len(expected) > 20


@pytest.mark.parametrize("q, threshold", [(0.2, None), (0.5, None), (1.0, None), (0.2, 1.0)])
def test_kept_pixels_are_top_q_mask_selection(q, threshold):
    # keep_pixels calls top_q_mask's NumPy selection directly: it must stay the same one
    from captum_gradflow.maps import top_q_mask

    rng = np.random.default_rng(4)
    maps = rng.choice([0.0, 0.5, 1.0, 2.0], size=(6, 9, 8)).astype(np.float32)  # ties, zeros
    maps[1] = 0.0
    maps[2] = 1.0
    kept, _ = regions_module.keep_pixels(maps, q, threshold)
    assert np.array_equal(kept, top_q_mask(torch.from_numpy(maps), q, threshold).mask.numpy())


def test_more_components_than_sixteen_bit_labels(monkeypatch):
    # isolated pixels on every other row and column, and a long line in the first map:
    # 77,401 components in one pass, more than 16-bit labels hold
    monkeypatch.setattr(regions_module, "CHUNK_PIXELS", 2 * 300 * 520)
    a = torch.zeros(2, 1, 300, 520)
    a[:, 0, ::2, 4::2] = 1.0
    a[0, 0, :, 0] = 1.0
    r = attribution_regions(a, threshold=0.0)
    dots = 150 * 258
    assert r.n_regions.tolist() == [dots + 1, dots]
    assert r.area.tolist() == [dots + 300.0, float(dots)]
    assert torch.equal(r.mask, r.kept)
    # each example gets its own hulls (they follow the label order), in its coordinates
    assert sorted(p.area for p in r.polygons[0])[-2:] == [1.0, 300.0]
    assert max(p.area for p in r.polygons[1]) == 1.0
    for polygons in r.polygons:
        bounds = shapely.bounds(np.asarray(polygons, dtype=object))
        assert bounds.min() >= 0 and bounds[:, 3].max() <= 300


@settings(max_examples=30, deadline=None)
@given(
    maps=arrays(np.float64, st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1, 9)),
                elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])),
    q=st.floats(0.05, 1.0),
    connectivity=st.sampled_from([1, 2]),
)
def test_properties_on_random_maps(maps, q, connectivity):
    r = attribution_regions(torch.from_numpy(maps), q=q, connectivity=connectivity)
    kept = r.kept.flatten(1).sum(1)
    assert (r.n_regions <= kept).all()
    assert (r.area >= kept.double() - 1e-9).all()  # hulls contain their pixel squares
    assert (r.mask | ~r.kept).all()  # the union of hulls covers every kept pixel
    assert not r.kept[torch.from_numpy(maps) <= 0].any()


def test_all_zero_and_constant_maps_are_noted_not_errors():
    a = torch.zeros(2, 1, 5, 5)
    a[1] = 3.0
    r = attribution_regions(a)
    assert r.n_regions.tolist() == [0, 1]
    assert r.area.tolist() == [0.0, 25.0]
    assert "all-zero" in r.notes[0] and "constant" in r.notes[1]
    assert r.polygons[0] == [] and r.unions[0].is_empty


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_maps_raise(bad):
    a = torch.rand(2, 1, 5, 5)
    a[1, 0, 2, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf.*examples \\[1\\]"):
        attribution_regions(a)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"q": 0.0}, "q must be"),
        ({"q": 1.5}, "q must be"),
        ({"q": -0.2}, "q must be"),
        ({"threshold": -1.0}, "threshold"),
        ({"connectivity": 3}, "connectivity"),
        ({"min_size": 0}, "min_size"),
        ({"reduce": "median"}, "reduce"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attribution_regions(torch.rand(1, 1, 4, 4), **kwargs)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        attribution_regions(torch.rand(4, 4))
    with pytest.raises(ValueError, match="tuple of 2"):
        attribution_regions((torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)))
    with pytest.raises(ValueError, match="one channel"):
        attribution_regions(torch.rand(1, 3, 4, 4), reduce="none")
    with pytest.raises(TypeError):
        attribution_regions("a map")
