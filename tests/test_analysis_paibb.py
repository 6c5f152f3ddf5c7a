"""PAIBB with exact fractional cell coverage, COCO size buckets, and padding invariance of all readings."""

from __future__ import annotations

import pytest
import torch

from sparse_detector.analysis import (
    SIZE_BUCKETS,
    AttentionMaps,
    MetricAggregator,
    box_coverage,
    compute_paibb,
    site_metrics,
    size_buckets,
)
from sparse_detector.report import result_markdown, result_rows


def coverage_of(box: list[float], grid: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """``box_coverage`` of one box, shaped as the padded grid."""
    return box_coverage(torch.tensor([box]), torch.tensor([grid]), padded).view(*padded)


def brute_coverage(box: list[float], h: int, w: int, padded: tuple[int, int]) -> list[list[float]]:
    """Overlap area / cell area of cell (i, j) = [j/w, (j+1)/w] x [i/h, (i+1)/h] with the box, cell by cell."""
    cx, cy, bw, bh = box
    x0, x1, y0, y1 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
    cells = [[0.0] * padded[1] for _ in range(padded[0])]
    for i in range(h):
        for j in range(w):
            overlap_x = max(0.0, min(x1, (j + 1) / w) - max(x0, j / w))
            overlap_y = max(0.0, min(y1, (i + 1) / h) - max(y0, i / h))
            cells[i][j] = overlap_x * overlap_y * h * w
    return cells


def one_image_maps(weights: torch.Tensor, grid: tuple[int, int]) -> AttentionMaps:
    """Decoder cross maps (layers, 1, heads, Lq, h*w) of one unpadded image."""
    mask = torch.zeros(1, grid[0] * grid[1], dtype=torch.bool)
    return AttentionMaps(list(weights), mask, torch.tensor([grid]), grid)


def one_box_paibb(attention: torch.Tensor, grid: tuple[int, int], box: list[float]) -> float:
    """PAIBB of a single (h*w,) map for one box."""
    maps = one_image_maps(attention.view(1, 1, 1, 1, -1), grid)
    target = {"boxes": torch.tensor([box]), "orig_size": torch.tensor([100, 100])}
    return compute_paibb(maps, [target], [(torch.tensor([0]), torch.tensor([0]))]).values.item()


def test_coverage_of_partial_cells_is_exact():
    # x in [0.125, 0.5] on 4 columns = [0.5, 2] in cell units: half of column 0, all of column 1 (1.5 cells)
    expected = torch.tensor([[0.5, 1.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(coverage_of([0.3125, 0.5, 0.375, 1.0], (2, 4), (2, 4)), expected)
    # touching the right border, y in [0.25, 0.75] on 2 rows: half of each row
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    torch.testing.assert_close(coverage_of([0.75, 0.5, 0.5, 0.5], (2, 4), (2, 4)), expected)
    # a box sticking out of the image counts only its inside part
    expected = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(coverage_of([1.0, 0.25, 0.5, 0.5], (2, 4), (2, 4)), expected)


def test_coverage_matches_cell_by_cell_reference_and_skips_padding():
    boxes = torch.rand(30, 4) * torch.tensor([1.0, 1.0, 0.6, 0.6]) + torch.tensor([0.0, 0.0, 0.01, 0.01])
    grids = [(3, 5), (4, 6), (1, 2)]
    for box in boxes.tolist():
        for grid in grids:
            reference = torch.tensor(brute_coverage(box, *grid, (4, 6)))
            torch.testing.assert_close(coverage_of(box, grid, (4, 6)), reference, rtol=0, atol=1e-6)
    full = coverage_of([0.5, 0.5, 1.0, 1.0], (2, 3), (3, 4))
    assert full.sum() == 6 and (full[:2, :3] == 1).all()


def test_cells_beyond_the_valid_grid_get_no_coverage_even_where_the_image_extends_over_them():
    """A valid grid of 2 x 2 cells (as a mask downsampled by nearest neighbour can give) of an image 2.5 cells wide:
    the box over the whole image covers the valid cells only."""
    whole = torch.tensor([[0.5, 0.5, 1.0, 1.0]], dtype=torch.float64)
    coverage = box_coverage(whole, torch.tensor([[2, 2]]), (3, 3), torch.tensor([[2.5, 2.5]], dtype=torch.float64))
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(coverage.view(3, 3), expected, rtol=0, atol=0)


def test_uniform_map_gives_box_area():
    grid = (5, 7)
    uniform = torch.full((35,), 1 / 35)
    for cx, cy, bw, bh in (torch.rand(20, 4) * 0.5 + 0.25).tolist():
        box = [cx, cy, min(bw, 2 * cx, 2 - 2 * cx), min(bh, 2 * cy, 2 - 2 * cy)]  # inside the image
        assert one_box_paibb(uniform, grid, box) == pytest.approx(box[2] * box[3], abs=1e-6)


def test_full_box_and_one_hot_maps():
    grid = (4, 4)
    attention = torch.distributions.Dirichlet(torch.ones(16)).sample()
    assert one_box_paibb(attention, grid, [0.5, 0.5, 1.0, 1.0]) == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.zeros(16)
    one_hot[1 * 4 + 2] = 1.0  # cell (1, 2) = [0.5, 0.75] x [0.25, 0.5]
    assert one_box_paibb(one_hot, grid, [0.625, 0.375, 0.25, 0.25]) == pytest.approx(1.0)  # exactly the cell
    assert one_box_paibb(one_hot, grid, [0.2, 0.8, 0.3, 0.3]) == 0.0  # elsewhere
    assert one_box_paibb(one_hot, grid, [0.5, 0.375, 0.25, 0.25]) == pytest.approx(0.5)  # half the cell
    assert one_box_paibb(one_hot, grid, [0.8125, 0.375, 0.375, 0.125]) == pytest.approx(0.5 * 0.5)  # a quarter


def test_compute_paibb_matches_reference_per_head_and_head_mean():
    padded = (4, 5)
    grids = [(3, 5), (4, 4)]
    mask = torch.ones(2, *padded, dtype=torch.bool)
    for b, (h, w) in enumerate(grids):
        mask[b, :h, :w] = False
    weights = torch.rand(2, 2, 3, 6, 20).masked_fill(mask.flatten(1)[None, :, None, None], 0.0)
    weights = weights / weights.sum(-1, keepdim=True)
    maps = AttentionMaps(list(weights), mask.flatten(1), torch.tensor(grids), padded)
    targets = [
        {"boxes": torch.tensor([[0.3, 0.4, 0.5, 0.3], [0.8, 0.2, 0.4, 0.4]]), "orig_size": torch.tensor([30, 40])},
        {"boxes": torch.tensor([[0.5, 0.5, 0.9, 0.7]]), "orig_size": torch.tensor([800, 600])},
    ]
    indices = [(torch.tensor([4, 1]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    matched = compute_paibb(maps, targets, indices)
    assert matched.values.shape == (2, 3, 3)
    assert matched.image_index.tolist() == [0, 0, 1]
    assert [SIZE_BUCKETS[i] for i in matched.size_bucket] == ["small", "small", "large"]
    pairs = [(0, 4, 1), (0, 1, 0), (1, 2, 0)]
    for m, (b, query, target) in enumerate(pairs):
        cover = torch.tensor(brute_coverage(targets[b]["boxes"][target].tolist(), *grids[b], padded)).flatten()
        reference = (weights[:, b, :, query] * cover).sum(-1)  # (layers, heads)
        torch.testing.assert_close(matched.values[:, m], reference, rtol=0, atol=1e-6)
        mean_map = weights[:, b, :, query].mean(1)  # the head-averaged map
        torch.testing.assert_close(matched.head_mean[:, m], (mean_map * cover).sum(-1), rtol=0, atol=1e-6)


def test_size_buckets_use_original_pixels():
    orig = torch.tensor([100, 200])  # h, w
    # areas just below and above 32^2 and 96^2 pixels (box w * 200 x box h * 100)
    sides = torch.tensor([31.99, 32.01, 95.99, 96.01])
    boxes = torch.stack([torch.full((4,), 0.5), torch.full((4,), 0.5), sides / 200, sides / 100], dim=1).double()
    assert size_buckets(boxes, orig).tolist() == [0, 1, 1, 2]


def test_size_buckets_put_areas_of_exactly_32_and_96_squared_in_the_larger_bucket():
    """COCO's buckets: small < 32² <= medium < 96² <= large."""
    whole_image = torch.tensor([[0.5, 0.5, 1.0, 1.0]], dtype=torch.float64)
    for side, bucket in ((32, "medium"), (96, "large")):
        assert size_buckets(whole_image, torch.tensor([side, side])).tolist() == [SIZE_BUCKETS.index(bucket)]


def test_aggregator_paibb_overall_and_by_size():
    maps = one_image_maps(torch.full((2, 1, 2, 3, 6), 1 / 6), (2, 3))
    target = {"boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.5]]), "orig_size": torch.tensor([40, 60])}
    indices = [(torch.tensor([0, 2]), torch.tensor([0, 1]))]
    aggregator = MetricAggregator(keep_per_image=True)
    aggregator.update({"decoder_cross": maps}, [target], indices)
    result = aggregator.result()
    paibb = result["sites"]["decoder_cross"]["paibb"]
    assert paibb["overall"]["per_layer"]["mean"] == pytest.approx([0.625, 0.625])  # (1 + 0.25) / 2
    assert paibb["overall"]["per_head"]["count"] == [[2, 2], [2, 2]]
    assert paibb["by_size"]["medium"]["per_layer"]["mean"] == pytest.approx([1.0, 1.0])  # 60 x 40 px
    assert paibb["by_size"]["small"]["per_layer"]["mean"] == pytest.approx([0.25, 0.25])  # 30 x 20 px
    assert paibb["by_size"]["large"]["per_layer"] == {"mean": [None, None], "std": [None, None], "count": [0, 0]}
    record = result["per_image"][0]["paibb"]
    assert [(r["query_index"], r["size"]) for r in record["decoder_cross"]] == [(0, "medium"), (2, "small")]
    metrics = {row["metric"] for row in result_rows(result)}
    assert {"paibb", "paibb_small", "paibb_medium", "paibb_large"} <= metrics
    assert "paibb_small" in result_markdown(result).splitlines()[0]
    with pytest.raises(ValueError, match="object queries over the feature grid"):
        aggregator.update({"decoder_self": AttentionMaps([torch.rand(1, 2, 3, 3)])}, [target], indices)


def test_per_image_records_of_images_without_boxes_list_no_pairs_at_each_paibb_site():
    """An image without ground truth had "paibb": {} in its per-image record while the others had
    {"decoder_cross": [...]}, so reading record["paibb"]["decoder_cross"] over every image raised KeyError."""
    maps = one_image_maps(torch.full((2, 1, 2, 3, 6), 1 / 6), (2, 3))
    maps = AttentionMaps([torch.cat([w, w]) for w in maps.weights], torch.cat([maps.key_padding_mask] * 2),
                         torch.cat([maps.grid_hw] * 2), maps.padded_hw)  # fmt: skip
    with_box = {"boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]]), "orig_size": torch.tensor([40, 60])}
    without = {"boxes": torch.zeros(0, 4), "orig_size": torch.tensor([40, 60])}
    indices = [(torch.tensor([1]), torch.tensor([0])), (torch.tensor([], dtype=torch.int64),) * 2]
    aggregator = MetricAggregator(keep_per_image=True)
    aggregator.update({"decoder_cross": maps}, [with_box, without], indices)
    records = aggregator.result()["per_image"]
    assert [len(record["paibb"]["decoder_cross"]) for record in records] == [1, 0]


def embed(weights: torch.Tensor, grid: tuple[int, int], padded: tuple[int, int], queries_on_grid: bool) -> torch.Tensor:
    """Maps over an h x w key grid embedded in a larger padded grid: zero weight on padded keys and, for grid
    queries (encoder self attention), arbitrary rows at padded queries, which must not count."""
    (h, w), (ph, pw) = grid, padded
    *lead, lq, _ = weights.shape
    out = torch.zeros(*lead, lq, ph, pw)
    out[..., :h, :w] = weights.view(*lead, lq, h, w)
    out = out.flatten(-2)
    if not queries_on_grid:
        return out
    rows = torch.rand(*lead, ph, pw, ph * pw)
    rows[..., :h, :w, :] = out.view(*lead, h, w, ph * pw)
    return rows.flatten(-3, -2)


def test_metrics_and_paibb_identical_alone_and_in_padded_batch():
    # Maps built directly on an image's own h x w grid, then embedded into a padded batch beside a larger image:
    # every reading of that image must not change. (The real-model version of this test is in test_recorder.py.)
    grid, other, padded = (3, 4), (5, 6), (5, 6)
    own_cross = torch.distributions.Dirichlet(torch.ones(12)).sample((2, 1, 2, 4))  # (layers, 1, heads, Lq, keys)
    own_cross[..., 3:6] = 0.0  # exact zeros, as in sparse maps
    own_cross = own_cross / own_cross.sum(-1, keepdim=True)
    own_enc = torch.distributions.Dirichlet(torch.ones(12)).sample((1, 1, 2, 12))
    big_cross = torch.distributions.Dirichlet(torch.ones(30)).sample((2, 1, 2, 4))
    big_enc = torch.distributions.Dirichlet(torch.ones(30)).sample((1, 1, 2, 30))
    mask = torch.ones(2, *padded, dtype=torch.bool)
    mask[0, : grid[0], : grid[1]] = False
    mask[1] = False
    mask = mask.flatten(1)
    grid_hw = torch.tensor([grid, other])
    batch = {
        "encoder_self": AttentionMaps(
            list(torch.cat([embed(own_enc, grid, padded, True), big_enc], 1)), mask, grid_hw, padded, mask
        ),
        "decoder_cross": AttentionMaps(
            list(torch.cat([embed(own_cross, grid, padded, False), big_cross], 1)), mask, grid_hw, padded
        ),
    }
    own_mask = torch.zeros(1, 12, dtype=torch.bool)
    alone = {
        "encoder_self": AttentionMaps(list(own_enc), own_mask, torch.tensor([grid]), grid, own_mask),
        "decoder_cross": AttentionMaps(list(own_cross), own_mask, torch.tensor([grid]), grid),
    }
    for site in batch:
        in_batch, by_itself = site_metrics(batch[site], 0.0), site_metrics(alone[site], 0.0)
        assert batch[site].image(0).weights[0].shape == alone[site].weights[0].shape
        queries = (~mask[0]).nonzero().squeeze(1) if site == "encoder_self" else torch.arange(4)  # valid queries
        for name, values in by_itself.items():
            own = in_batch[name][:, :1].index_select(-1, queries)
            torch.testing.assert_close(own.double(), values.double(), rtol=0, atol=1e-6)
    boxes = torch.tensor([[0.4, 0.5, 0.35, 0.7], [0.9, 0.1, 0.3, 0.3]])
    targets = [
        {"boxes": boxes, "orig_size": torch.tensor([300, 400])},
        {"boxes": boxes[:1], "orig_size": torch.tensor([500, 600])},
    ]
    indices = [(torch.tensor([3, 0]), torch.tensor([0, 1])), (torch.tensor([1]), torch.tensor([0]))]
    paibb_batch = compute_paibb(batch["decoder_cross"], targets, indices).values[:, :2]
    paibb_alone = compute_paibb(alone["decoder_cross"], targets[:1], indices[:1]).values
    torch.testing.assert_close(paibb_batch, paibb_alone, rtol=0, atol=1e-6)
    together, separate = MetricAggregator(), MetricAggregator()
    together.update(batch)
    separate.update(alone)
    separate.update({site: maps_.image(1) for site, maps_ in batch.items()})
    for row, reference in zip(result_rows(together.result()), result_rows(separate.result()), strict=True):
        assert row["count"] == reference["count"]
        assert row["mean"] == pytest.approx(reference["mean"], abs=1e-6)
        assert row["std"] == pytest.approx(reference["std"], abs=1e-6)


def raster_coverage(box_px: tuple[int, int, int, int], image_hw: tuple[int, int], stride: int, padded: tuple[int, int]):
    """Reference from the definition, in pixels: cell (i, j) covers pixels [j * stride, (j + 1) * stride) x
    [i * stride, (i + 1) * stride); its coverage is the share of its stride² pixels that lie in the image and in the
    box (x0, y0, x1, y1) with whole-pixel edges, counted pixel by pixel."""
    x0, y0, x1, y1 = box_px
    pixels = torch.zeros(padded[0] * stride, padded[1] * stride, dtype=torch.float64)
    pixels[y0:y1, x0:x1] = 1.0
    pixels[image_hw[0] :, :] = 0.0
    pixels[:, image_hw[1] :] = 0.0
    return pixels.view(padded[0], stride, padded[1], stride).sum((1, 3)) / stride**2


def normalised(box_px: tuple[int, int, int, int], image_hw: tuple[int, int]) -> list[float]:
    x0, y0, x1, y1 = box_px
    height, width = image_hw
    return [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]


def one_hot_cell_paibb(images_hw: list[tuple[int, int]], boxes_px: list[tuple], stride: int) -> list[torch.Tensor]:
    """PAIBB of one box per image (padded together in one batch), read by one query per cell of the padded grid
    that puts all its attention on that cell: the box's coverage of every cell, shaped as the padded grid (zero
    where the cell is padding). The grids are the backbone's: ceil(side / stride) valid cells per side."""
    padded_px = (max(h for h, _ in images_hw), max(w for _, w in images_hw))
    padded = tuple(-(-side // stride) for side in padded_px)
    grids = [tuple(-(-side // stride) for side in hw) for hw in images_hw]
    cells = padded[0] * padded[1]
    mask = torch.ones(len(images_hw), *padded, dtype=torch.bool)
    for b, (h, w) in enumerate(grids):
        mask[b, :h, :w] = False
    weights = torch.eye(cells)[None, None].expand(len(images_hw), 1, -1, -1).double()  # query k -> cell k
    maps = AttentionMaps([weights], mask.flatten(1), torch.tensor(grids), padded, key_strides=(stride,))
    targets = [
        {"boxes": torch.tensor([normalised(box, hw)]), "orig_size": torch.tensor(hw), "size": torch.tensor(hw)}
        for box, hw in zip(boxes_px, images_hw, strict=True)
    ]
    indices = [(torch.arange(cells), torch.zeros(cells, dtype=torch.long)) for _ in images_hw]
    values = compute_paibb(maps, targets, indices).values[0, :, 0].view(len(images_hw), *padded)
    return [v.double() * ~m for v, m in zip(values, mask, strict=True)]


def test_boxes_land_on_their_pixels_when_sides_are_not_multiples_of_the_stride():
    # 100 px at stride 32: 4 cells covering 128 px. A box over x in [64, 100] px covers all of cell 2 and 4/32 of
    # cell 3 (laying it over the 4 cells as if they covered exactly the image gave 0.44 of cell 2 and all of cell 3).
    row = one_hot_cell_paibb([(32, 100)], [(64, 0, 100, 32)], 32)[0][0]
    torch.testing.assert_close(row, torch.tensor([0.0, 0.0, 1.0, 4 / 32], dtype=torch.float64))
    cases = [
        ((75, 100), (64, 10, 100, 75)),  # touching the right and bottom borders
        ((75, 100), (5, 3, 40, 70)),
        ((75, 100), (0, 0, 100, 75)),  # the whole image: 100 x 75 of 128 x 96 pixels
        ((800, 1066), (1000, 700, 1066, 800)),  # 34 x 25 cells covering 1088 x 800 pixels
        ((800, 1066), (517, 33, 790, 411)),
        ((75, 100), (80, 50, 130, 110)),  # past the right and bottom borders: only the part inside the image counts
    ]
    for image_hw, box in cases:
        padded = tuple(-(-side // 32) for side in image_hw)
        coverage = one_hot_cell_paibb([image_hw], [box], 32)[0]
        torch.testing.assert_close(coverage, raster_coverage(box, image_hw, 32, padded), rtol=0, atol=1e-5)


def test_boxes_land_on_their_pixels_in_a_padded_batch_of_two_sizes():
    # 100 x 75 and 60 x 90 (w x h) padded together to 100 x 90: a 3 x 4 grid of stride 32, the second image 3 x 2.
    images_hw, boxes = [(75, 100), (90, 60)], [(70, 40, 100, 75), (20, 50, 60, 90)]
    for coverage, box, image_hw in zip(one_hot_cell_paibb(images_hw, boxes, 32), boxes, images_hw, strict=True):
        torch.testing.assert_close(coverage, raster_coverage(box, image_hw, 32, (3, 4)), rtol=0, atol=1e-5)


def test_csv_rows_hold_the_upsampled_paibb_where_it_was_read():
    """``analyze --paibb-upsampled`` wrote the thesis-compatible PAIBB into analysis.json and analysis.md but not
    into analysis.csv: a table read for the thesis comparison silently lacked it."""
    maps = one_image_maps(torch.full((2, 1, 2, 3, 6), 1 / 6), (2, 3))
    target = {"boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 0.5]]), "orig_size": torch.tensor([40, 60])}
    indices = [(torch.tensor([0, 2]), torch.tensor([0, 1]))]
    plain, upsampled = MetricAggregator(), MetricAggregator(paibb_upsampled=True)
    for aggregator in (plain, upsampled):
        aggregator.update({"decoder_cross": maps}, [target], indices)
    assert not any(row["metric"].startswith("paibb_upsampled") for row in result_rows(plain.result()))
    result = upsampled.result()
    thesis = result["sites"]["decoder_cross"]["paibb"]["upsampled_last_layer"]
    rows = {row["metric"]: row for row in result_rows(result) if row["metric"].startswith("paibb_upsampled")}
    assert set(rows) == {"paibb_upsampled", "paibb_upsampled_small", "paibb_upsampled_medium", "paibb_upsampled_large"}
    assert rows["paibb_upsampled"] == {"site": "decoder_cross", "layer": 1, "head": "mean",
                                       "metric": "paibb_upsampled", **thesis["overall"]}  # fmt: skip
    assert rows["paibb_upsampled_large"]["count"] == 0 and rows["paibb_upsampled_small"]["count"] == 1
