"""The thesis-compatible PAIBB (last layer, head average, bilinearly upsampled to the image size) vs brute force."""

from __future__ import annotations

from dataclasses import replace

import torch

from sparse_detector.analysis import AttentionMaps
from sparse_detector.analysis.paibb import upsampled_paibb, widest_float


def test_uniform_map_gives_the_box_pixel_share_and_padding_is_cropped():
    # Two images padded to a 4 x 6 grid; image 1's valid grid is 3 x 4. Uniform maps on the valid cells.
    padded, valid = (4, 6), [(4, 6), (3, 4)]
    mask = torch.ones(2, *padded, dtype=torch.bool)
    for b, (h, w) in enumerate(valid):
        mask[b, :h, :w] = False
    weights = (~mask).flatten(1).double() / (~mask).flatten(1).sum(1, keepdim=True)
    weights = weights[:, None, None, :].expand(2, 2, 3, -1)  # 2 heads, 3 queries
    maps = AttentionMaps(
        [weights.clone(), weights.clone()], mask.flatten(1), torch.tensor(valid), padded, keys="grid", queries="queries"
    )
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "orig_size": torch.tensor([40, 60])},
        {"boxes": torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.9, 0.1, 0.2, 0.2]]), "orig_size": torch.tensor([30, 41])},
    ]
    indices = [(torch.tensor([2]), torch.tensor([0])), (torch.tensor([0, 1]), torch.tensor([0, 1]))]
    values = upsampled_paibb(maps, targets, indices)

    def pixel_share(box: list[float], height: int, width: int) -> float:
        cx, cy, w, h = box
        x0, x1 = max(round((cx - w / 2) * width), 0), min(round((cx + w / 2) * width), width)
        y0, y1 = max(round((cy - h / 2) * height), 0), min(round((cy + h / 2) * height), height)
        return (x1 - x0) * (y1 - y0) / (height * width)

    expected = [
        pixel_share([0.5, 0.5, 0.5, 0.5], 40, 60),
        pixel_share([0.25, 0.5, 0.5, 1.0], 30, 41),
        pixel_share([0.9, 0.1, 0.2, 0.2], 30, 41),
    ]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_mass_in_one_cell_stays_mostly_in_that_cell_box():
    weights = torch.zeros(1, 1, 1, 16, dtype=torch.float64)
    weights[..., 5] = 1.0  # row 1, column 1 of a 4 x 4 grid
    maps = AttentionMaps(
        [weights], torch.zeros(1, 16, dtype=torch.bool), torch.tensor([[4, 4]]), (4, 4), keys="grid", queries="queries"
    )
    cell_box = {"boxes": torch.tensor([[0.375, 0.375, 0.25, 0.25]]), "orig_size": torch.tensor([64, 64])}
    far_box = {"boxes": torch.tensor([[0.875, 0.875, 0.25, 0.25]]), "orig_size": torch.tensor([64, 64])}
    match = [(torch.tensor([0]), torch.tensor([0]))]
    inside = upsampled_paibb(maps, [cell_box], match)[0]
    assert 0.4 < inside < 1.0, "bilinear upsampling spreads the cell's mass beyond it (unlike the exact reading)"
    assert upsampled_paibb(maps, [far_box], match)[0] == 0


def test_maps_without_a_padding_mask():
    """AttentionMaps take ``key_padding_mask=None`` (no padding), but the upsampled reading subscripted it:
    TypeError."""
    weights = torch.full((1, 2, 1, 6), 1 / 6, dtype=torch.float64)  # uniform on a 2 x 3 grid
    maps = AttentionMaps([weights], None, torch.tensor([[2, 3]]), (2, 3), keys="grid", queries="queries")
    right_two_thirds = {"boxes": torch.tensor([[2 / 3, 0.5, 2 / 3, 1.0]]), "orig_size": torch.tensor([20, 30])}
    match = [(torch.tensor([0]), torch.tensor([0]))]
    masked = replace(maps, key_padding_mask=torch.zeros(1, 6, dtype=torch.bool))
    value = upsampled_paibb(maps, [right_two_thirds], match)[0]
    assert value == upsampled_paibb(masked, [right_two_thirds], match)[0]
    assert abs(value - 2 / 3) < 1e-12  # the box's share of the pixels (20 of 30 columns)


def test_box_edges_round_to_the_nearest_pixel():
    """Edges at 14.35 and 26.65 px take columns 14 to 26 (13), at 7.75 and 23.25 px rows 8 to 22 (15): rounded,
    not truncated (truncation gives 12 x 16)."""
    weights = torch.full((1, 1, 1, 6), 1 / 6, dtype=torch.float64)  # uniform on a 2 x 3 grid
    maps = AttentionMaps([weights], None, torch.tensor([[2, 3]]), (2, 3), keys="grid", queries="queries")
    box = {"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.5]], dtype=torch.float64), "orig_size": torch.tensor([31, 41])}
    value = upsampled_paibb(maps, [box], [(torch.tensor([0]), torch.tensor([0]))])[0]
    assert abs(value - 13 * 15 / (31 * 41)) < 1e-12


def test_keeps_the_thesis_geometry_when_sides_are_not_multiples_of_the_stride():
    """The thesis upsampled the valid grid to the image size, stretching it where a side is not a multiple of the
    stride; the compatible reading does the same on purpose (the default PAIBB places cells on their pixels)."""
    # A 200 x 150 (w x h) image fed to the model at 100 x 75: at stride 32 its valid grid is 3 x 4 cells (128 x 96
    # model pixels), upsampled to 200 x 150 all the same. Rows are uniform, the columns hold mass 0, 0, 1, 3; the
    # box is the right half of the image, all rows.
    columns = [0.0, 0.0, 1.0, 3.0]
    weights = torch.tensor(columns, dtype=torch.float64).repeat(3).view(1, 1, 1, 12) / 12.0
    maps = AttentionMaps(
        [weights], None, torch.tensor([[3, 4]]), (3, 4), keys="grid", queries="queries", key_strides=(32,)
    )
    target = {
        "boxes": torch.tensor([[0.75, 0.5, 0.5, 1.0]]),
        "orig_size": torch.tensor([150, 200]),
        "size": torch.tensor([75, 100]),
    }
    value = upsampled_paibb(maps, [target], [(torch.tensor([0]), torch.tensor([0]))])[0]

    def bilinear(k: int, size_in: int, size_out: int) -> float:
        """Pixel k of the columns bilinearly upsampled from size_in to size_out (align_corners=False)."""
        source = max((k + 0.5) * size_in / size_out - 0.5, 0.0)
        low = int(source)
        high, fraction = min(low + 1, size_in - 1), source - low
        return columns[low] * (1 - fraction) + columns[high] * fraction

    profile = [bilinear(k, 4, 200) for k in range(200)]
    assert abs(value.item() - sum(profile[100:200]) / sum(profile)) < 1e-12


def test_the_geometry_is_float64_except_on_mps_which_has_none():
    """PAIBB's geometry was cast to float64 on the maps' device: `analyze --device mps` would fail, MPS has no
    float64."""
    assert widest_float(torch.device("cpu")) == torch.float64
    assert widest_float(torch.device("cuda", 0)) == torch.float64
    assert widest_float(torch.device("mps")) == torch.float32
