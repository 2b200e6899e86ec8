"""Attribution regions of volumes: exact hull volumes, 26-connectivity, unions, RC in 3-D."""
from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from captum_gradflow.metrics import VolumeRegions, attribution_regions, region_complexity
from captum_gradflow.metrics._volumes import (
    VoxelComponents,
    closed_form_volumes,
    components,
    hull_volumes,
)
from captum_gradflow.metrics.volume_regions import label_volumes
from captum_gradflow.visualization.volumes import plane_section

CORNERS = np.array(list(itertools.product((0, 1), repeat=3)))


def brute_hull_volume(voxels) -> float:
    """Independent: Qhull of all 8 corners of every voxel cube."""
    pts = (np.asarray(voxels)[:, None, :] + CORNERS[None]).reshape(-1, 3)
    return ConvexHull(pts.astype(float)).volume


def volume_of(voxels, size: int = 12) -> torch.Tensor:
    a = torch.zeros(1, 1, size, size, size, dtype=torch.float64)
    for v in voxels:
        a[(0, 0, *v)] = 1.0
    return a


def grid(size: int = 12) -> np.ndarray:
    return np.indices((size,) * 3).reshape(3, -1).T


def test_one_voxel_is_a_unit_cube():
    r = attribution_regions(volume_of([(3, 4, 5)]), threshold=0.0)
    assert isinstance(r, VolumeRegions)
    assert r.n_regions.tolist() == [1] and r.area.tolist() == [1.0]
    assert r.mask.sum() == 1 and r.mask[0, 3, 4, 5]


def test_two_separate_boxes_add_exactly():
    a = torch.zeros(1, 1, 10, 10, 10)
    a[0, 0, 1:3, 1:4, 1:5] = 1.0  # 2 x 3 x 4
    a[0, 0, 6:9, 6:8, 6:7] = 2.0  # 3 x 2 x 1
    r = attribution_regions(a, threshold=0.0)
    assert r.n_regions.tolist() == [2] and r.area.tolist() == [24.0 + 6.0]
    assert sorted(r.volumes[0].tolist()) == [6.0, 24.0]


@pytest.mark.parametrize("length", [2, 3, 5])
def test_diagonal_line_of_voxels(length):
    line = [(i, i, i) for i in range(length)]
    r = attribution_regions(volume_of(line), threshold=0.0)
    # a unit cube swept along (n-1)(1, 1, 1): 1 + 3 (n - 1), and Qhull of all corners agrees
    assert r.n_regions.item() == 1
    assert r.area.item() == pytest.approx(1 + 3 * (length - 1), abs=1e-9)
    assert r.area.item() == pytest.approx(brute_hull_volume(line), abs=1e-9)


def test_flat_line_and_sheet_are_not_degenerate():
    line = [(2, 5, x) for x in range(1, 7)]
    sheet = [(4, y, x) for y in range(3) for x in range(2)] + [(4, 3, 0)]
    for voxels in (line, sheet):
        r = attribution_regions(volume_of(voxels), threshold=0.0)
        assert r.area.item() == pytest.approx(brute_hull_volume(voxels), abs=1e-9)
        assert r.area.item() > 0


def test_ball_matches_qhull_of_all_corners():
    p = grid()
    ball = p[((p - 5.5) ** 2).sum(1) <= 16]
    r = attribution_regions(volume_of(ball), threshold=0.0)
    assert r.n_regions.item() == 1
    assert r.area.item() == pytest.approx(brute_hull_volume(ball), rel=1e-12)
    assert (r.mask[0] >= r.kept[0]).all()


def test_hollow_shell_with_a_voxel_inside_counts_the_shell_hull_once():
    p = grid()
    d2 = ((p - 5.5) ** 2).sum(1)
    shell = p[(d2 >= 16) & (d2 <= 25)]
    r = attribution_regions(volume_of(np.r_[shell, [[5, 5, 5]]]), threshold=0.0)
    assert r.n_regions.item() == 2  # the middle voxel is not 26-adjacent to the shell
    assert r.area.item() == pytest.approx(brute_hull_volume(shell), rel=1e-12)


def test_overlapping_hulls_union_is_measured_on_the_grid():
    # an L whose hull has the face y + x = 6, and a voxel cut in half by it (not adjacent)
    a = [(0, 0, x) for x in range(5)] + [(0, y, 0) for y in range(1, 5)]
    b = [(0, 3, 2)]
    exact = brute_hull_volume(a) + 0.5
    errors = []
    for s in (4, 16):
        r = attribution_regions(volume_of(a + b, 6), threshold=0.0, supersampling=s)
        assert r.n_regions.item() == 2
        errors.append(abs(r.area.item() - exact))
    # points on the face count as outside: the error is at most the boundary's samples
    assert errors[0] <= 4 / 16 / 2 + 1e-9 and errors[1] < errors[0] and errors[1] <= 0.04


def test_connectivity_options_in_3d():
    corner_pair = volume_of([(0, 0, 0), (1, 1, 1)], 4)
    assert attribution_regions(corner_pair, threshold=0.0).n_regions.item() == 1
    assert attribution_regions(corner_pair, threshold=0.0, connectivity=2).n_regions.item() == 2
    with pytest.raises(ValueError, match="connectivity"):
        attribution_regions(corner_pair, connectivity=4)
    with pytest.raises(ValueError, match="supersampling"):
        attribution_regions(corner_pair, supersampling=0)


def test_rc_of_a_volume_against_itself_is_one_and_translation_invariant():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.avg_pool3d(torch.rand(3, 1, 18, 18, 18, generator=g), 3, 1, 1)
    rc = region_complexity(a, a, q=0.1)
    assert torch.equal(rc.rc, torch.ones(3, dtype=torch.float64))
    ref = torch.zeros_like(a)
    ref[:, :, 4:14, 4:14, 4:14] = a[:, :, 4:14, 4:14, 4:14]
    gad = ref.clone()
    gad[:, :, 9:] = 0.0
    shift = dict(shifts=(2, -3, 1), dims=(2, 3, 4))  # stays inside: nothing wraps
    before = region_complexity(gad, ref, q=0.05)
    after = region_complexity(torch.roll(gad, **shift), torch.roll(ref, **shift), q=0.05)
    assert torch.allclose(before.rc, after.rc, rtol=0, atol=1e-12)
    assert torch.equal(before.n_regions, after.n_regions)
    assert (before.rc < 1).all()


def test_batched_equals_one_by_one_and_indexing():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 2, 9, 8, 7, generator=g)
    batch = attribution_regions(a, q=0.15)
    for i in range(3):
        one = attribution_regions(a[i:i + 1], q=0.15)
        assert torch.allclose(one.area, batch.area[i:i + 1], atol=1e-9)
        assert torch.equal(one.mask, batch[i].mask)
        assert len(batch[i].hulls[0]) == one.n_regions.item()
    with pytest.raises(IndexError):
        batch[3]


def test_plane_section_of_a_cube_and_a_tetrahedron():
    cube = (CORNERS * 2).astype(float)
    ring = plane_section(cube, 0, 0.5)[0]
    assert ring.shape == (5, 2) and set(map(tuple, ring[:-1])) == {(0, 0), (0, 2), (2, 0), (2, 2)}
    assert plane_section(cube, 1, 3.0) == []
    tet = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 2]], float)
    tri = plane_section(tet, 2, 1.0)[0]
    assert len(tri) == 4 and np.allclose(sorted(map(tuple, tri[:-1])), [(0, 0), (0, 1), (1, 0)])


def test_closed_forms_and_qhull_agree_with_all_corners_on_random_components():
    """Every path (box, 2-4 voxel closed forms, filtered Qhull) against Qhull of all corners."""
    from skimage.measure import label

    rng = np.random.default_rng(0)
    seen = set()
    for trial in range(12):
        kept = rng.random((9, 9, 9)) < (0.08 if trial % 2 else 0.3)
        r = attribution_regions(torch.from_numpy(kept[None, None] * 1.0), threshold=0.0)
        labels = label(kept, connectivity=3)
        ks = range(1, labels.max() + 1)
        expected = sorted(brute_hull_volume(np.argwhere(labels == k)) for k in ks)
        assert np.allclose(sorted(r.volumes[0].tolist()), expected, atol=1e-9)
        seen.update(np.bincount(labels.ravel())[1:].clip(max=5).tolist())
    assert {1, 2, 3, 4, 5} <= seen  # every closed form and Qhull were exercised


def brute_union_volume(kept: np.ndarray, s: int) -> Tuple[float, bool]:
    """Independent union volume of one volume's hulls: exact volumes of the hulls not inside
    another, minus (m - 1) / s^3 for every sub-voxel centre of the whole volume strictly
    inside m of them; and whether any point was inside two."""
    from skimage.measure import label

    labels = label(kept, connectivity=3)
    hulls = [
        ConvexHull(((np.argwhere(labels == k)[:, None] + CORNERS).reshape(-1, 3)).astype(float))
        for k in range(1, labels.max() + 1)
    ]
    axes = [(np.arange(n * s) + 0.5) / s for n in kept.shape]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def inside(hull, pts, tol):
        return np.all(pts @ hull.equations[:, :3].T + hull.equations[:, 3] < tol, axis=1)

    top = [
        h for i, h in enumerate(hulls)
        if not any(j != i and inside(g, h.points[h.vertices], 1e-9).all()
                   for j, g in enumerate(hulls))
    ]
    m = sum(inside(h, points, -1e-9).astype(int) for h in top)
    return sum(h.volume for h in top) - np.maximum(m - 1, 0).sum() / s ** 3, bool((m > 1).any())


def test_union_of_random_overlapping_hulls_against_brute_force_sampling():
    rng = np.random.default_rng(3)
    overlapping = 0
    for _ in range(6):
        kept = rng.random((9, 9, 9)) < 0.25
        expected, overlaps = brute_union_volume(kept, 2)
        overlapping += overlaps
        r = attribution_regions(torch.from_numpy(kept[None, None] * 1.0), threshold=0.0,
                                supersampling=2)
        assert r.area.item() == pytest.approx(expected, abs=1e-9)
    assert overlapping >= 3  # the sampled correction was exercised


def test_union_of_a_large_hull_and_small_ones_around_its_boundary(monkeypatch):
    """Like attribution maps: one large irregular component (a hull with many facets) and
    scattered voxels near its boundary, some inside its hull, some sticking out of it.
    Halving the boxes that many planes cross (here: every box, twice) changes nothing."""
    from captum_gradflow.metrics import _voxel_overlap

    rng = np.random.default_rng(11)
    p = np.indices((14, 14, 14)).reshape(3, -1).T
    r2 = ((p - [6.5, 7.0, 6.0]) ** 2 * [1.0, 0.6, 1.4]).sum(1)
    for trial in range(2):
        kept = np.zeros((14, 14, 14), dtype=bool)
        blob = p[(r2 <= 20) & (rng.random(len(p)) < 0.9)]
        kept[tuple(blob.T)] = True
        shell = p[(r2 > 22) & (r2 < 50) & (rng.random(len(p)) < 0.12)]
        kept[tuple(shell.T)] = True
        for s in (2, 3):
            expected, overlaps = brute_union_volume(kept, s)
            assert overlaps
            r = attribution_regions(torch.from_numpy(kept[None, None] * 1.0), threshold=0.0,
                                    supersampling=s)
            assert r.n_regions.item() > 10
            assert r.area.item() == pytest.approx(expected, abs=1e-9)
            with monkeypatch.context() as m:
                m.setattr(_voxel_overlap, "MANY_PLANES", 0)
                m.setattr(_voxel_overlap, "SPLITS", 2)
                halved = attribution_regions(torch.from_numpy(kept[None, None] * 1.0),
                                             threshold=0.0, supersampling=s)
            assert halved.area.item() == r.area.item()


def components_of(kept: np.ndarray) -> VoxelComponents:
    labels, n = label_volumes(kept, 3, 1)
    return components(labels, n, kept.shape[1])


def test_flat_components_in_closed_form_match_qhull_and_translate_exactly():
    """One voxel thick along z, y or x: no Qhull; each pattern also shifted in example 1."""
    rng = np.random.default_rng(7)
    kept = np.zeros((18, 12, 12, 12), dtype=bool)  # a pattern, then it shifted, per example
    for axis, trial in itertools.product(range(3), range(3)):
        patch = rng.random((6, 7) if trial % 2 else (8, 5)) < 0.55
        shape = list(patch.shape)
        shape.insert(axis, 1)
        for e, shift in ((0, (0, 0, 0)), (1, (1, 2, 3))):
            region = tuple(slice(1 + t, 1 + t + n) for t, n in zip(shift, shape))
            kept[(6 * axis + 2 * trial + e,) + region] = patch.reshape(shape)
    c = components_of(kept)
    size = c.hi - c.lo + 1
    volume, known = closed_form_volumes(c)
    flat = (size.min(1) == 1) & (c.count > 4) & (c.count < np.prod(size, axis=1))
    assert flat.sum() >= 12 and known[flat].all()
    expected = [brute_hull_volume(c.voxels(k)) for k in range(len(c))]
    assert np.allclose(volume[known], np.array(expected)[known], rtol=0, atol=1e-9)
    by_parity = [sorted(volume[c.example % 2 == e].tolist()) for e in (0, 1)]
    assert by_parity[0] == by_parity[1]


def test_long_flat_components_are_in_closed_form_too():
    """A sheet 40 voxels long (a zigzag band and a sparse diagonal): no extent limit."""
    kept = np.zeros((2, 3, 44, 44), dtype=bool)
    rows = np.arange(40)
    wave = 2 + np.abs(rows % 8 - 4)
    kept[0, 1, rows + 2, wave] = True  # a zigzag band along y, two voxels wide
    kept[0, 1, rows + 2, wave + 1] = True
    kept[1, 1, rows + 2, rows + 2] = True  # a diagonal line with a bar at its top end
    kept[1, 1, 2, 2:12] = True
    c = components_of(kept)
    volume, known = closed_form_volumes(c)
    assert len(c) == 2 and known.all() and ((c.hi - c.lo + 1).max(1) >= 40).all()
    expected = [brute_hull_volume(c.voxels(k)) for k in range(len(c))]
    assert np.allclose(volume, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("box", [2, 3])
def test_hull_volumes_of_small_random_components_and_translated_copies(box):
    """Every path (box, 2-4 voxels, flat, Qhull) on random patterns in ``box^3`` cells, each
    pattern in example 0 and shifted in example 1, against Qhull of all corners."""
    rng = np.random.default_rng(box)
    cells = 5
    step = box + 1  # a free slice between cells: each cell holds its own components
    kept = np.zeros((2, cells * step + 2, cells * step + 2, cells * step + 2), dtype=bool)
    for i, j, k in itertools.product(range(cells), repeat=3):
        pattern = rng.random((box,) * 3) < rng.uniform(0.2, 0.9)
        for e, t in ((0, 0), (1, 1)):
            z, y, x = i * step + t, j * step + t, k * step
            kept[e, z:z + box, y:y + box, x:x + box] = pattern
    c = components_of(kept)
    volume = hull_volumes(c, {})
    expected = np.array([brute_hull_volume(c.voxels(k)) for k in range(len(c))])
    assert np.allclose(volume, expected, rtol=0, atol=1e-9)
    by_example = [sorted(volume[c.example == e].tolist()) for e in (0, 1)]
    assert by_example[0] == by_example[1]
    size = c.hi - c.lo + 1
    assert len(np.unique(c.count.clip(max=6))) == 6 and (size.min(1) == 1).any()


def test_solid_components_without_qhull_match_qhull():
    """Facets holding lattice points inside them or along their edges, a line that is not
    along an axis, random blobs: from their extreme voxels alone; a flat diagonal component
    is left to Qhull."""
    rng = np.random.default_rng(5)
    p = np.indices((6, 6, 6)).reshape(3, -1).T
    shapes = [
        p[(p < 4).all(1) & ~(p == 0).all(1)],  # a 4^3 block less one corner voxel
        p[((p - 2.5) ** 2).sum(1) <= 6.5],  # a ball
        p[p.sum(1) <= 4],  # a staircase tetrahedron
        np.array([[i, i, i] for i in range(6)]),  # a line along no axis
    ] + [p[(p < 4).all(1) & (rng.random(len(p)) < 0.6)] for _ in range(6)]
    flat = p[(p.sum(1) == 5) & (p < 4).all(1)]  # one plane, along no axis
    kept = np.zeros((len(shapes) + 1, 8, 8, 8), dtype=bool)
    for e, voxels in enumerate(shapes + [flat]):
        kept[(e,) + tuple((voxels + 1).T)] = True
    c = components_of(kept)
    volume, known = closed_form_volumes(c)
    assert len(c) == len(shapes) + 1  # one component each
    # the ball and some blobs have more than 16 extreme voxels: Qhull
    assert known[:4].tolist() == [True, False, True, True] and known[4:-1].sum() >= 3
    assert not known[-1]
    expected = np.array([brute_hull_volume(c.voxels(k)) for k in range(len(c))])
    assert np.allclose(volume[known], expected[known], rtol=0, atol=1e-9)
    assert volume[3] == pytest.approx(1 + 3 * 5, abs=1e-12)


def test_small_hull_planes_are_qhulls_facet_planes():
    """Planes built from extreme voxels (Minkowski sum with the cube) against Qhull's facet
    planes of all corners, on random components: lines, flat ones, solid ones."""
    from captum_gradflow.metrics._voxel_hulls import small_hull_planes

    kept = np.random.default_rng(0).random((3, 14, 14, 14)) < 0.12
    c = components_of(kept)
    ours = small_hull_planes(c, np.arange(len(c)))
    size = c.hi - c.lo + 1
    tested = set()
    for k, eq in ours.items():
        if c.count[k] == np.prod(size[k]):
            continue
        pts = (c.voxels(k) - c.lo[k])[:, None] + CORNERS
        ref = ConvexHull(pts.reshape(-1, 3).astype(float)).equations
        assert set(map(tuple, np.round(eq, 9))) == set(map(tuple, np.round(ref, 9)))
        tested.add((min(int(c.count[k]), 5), bool(size[k].min() == 1)))
    assert {(2, False), (5, False)} <= tested and any(flat for _, flat in tested)


def test_min_size_drops_small_components_of_volumes():
    ell = [(1, 1, 1), (1, 2, 1), (2, 2, 2)]  # three voxels, 26-connected
    a = volume_of(ell + [(9, 9, 9)])
    everything = attribution_regions(a, threshold=0.0)
    r = attribution_regions(a, threshold=0.0, min_size=2)
    assert everything.n_regions.item() == 2 and r.n_regions.item() == 1
    assert r.volume.item() == pytest.approx(brute_hull_volume(ell), abs=1e-9)
    assert everything.volume.item() == pytest.approx(brute_hull_volume(ell) + 1.0, abs=1e-9)
    assert int(r.kept.sum()) == 3 and not bool(r.kept[0, 9, 9, 9])
