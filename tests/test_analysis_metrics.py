"""Sparsity metrics against brute-force references, and the streaming aggregation of metrics."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from sparse_detector.analysis import (
    METRICS,
    AttentionMaps,
    MetricAggregator,
    RunningStats,
    entropy,
    gini,
    site_metrics,
    support_90,
    zeros_ratio,
)
from sparse_detector.report import result_markdown, result_rows

METRIC_FUNCTIONS = {
    "gini": gini,
    "zeros_ratio": lambda p: zeros_ratio(p, None, 1e-6),
    "entropy": entropy,
    "support_90": support_90,
}


def pairwise_gini(c: list[float]) -> float:
    """Gini as the mean absolute difference: sum_i sum_j |c_i - c_j| / (2 N sum c)."""
    n = len(c)
    return sum(abs(a - b) for a in c for b in c) / (2 * n * sum(c))


def brute_support(c: list[float], mass: float) -> int:
    """Smallest number of entries whose sum reaches ``mass`` of the total, over all subsets."""
    total = sum(c)
    for size in range(1, len(c) + 1):
        if any(sum(subset) >= mass * total for subset in itertools.combinations(c, size)):
            return size
    raise AssertionError("unreachable")


def padded_rows(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows (float64) whose first ``length`` entries are valid, and the key padding mask (True = padding);
    padded entries hold garbage to be ignored."""
    p = torch.rand(len(lengths), width, dtype=torch.float64) * 5
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    p = torch.where(valid, torch.rand_like(p).pow(3), p)
    p[:, 1] = 0.0  # exact zeros occur in sparse maps
    return p / (p * valid).sum(-1, keepdim=True), ~valid


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_gini_uniform_and_one_hot(n: int):
    uniform = torch.full((1, n), 1.0 / n)
    one_hot = torch.zeros(1, n)
    one_hot[0, n // 2] = 1.0
    assert gini(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert gini(one_hot).item() == pytest.approx(1 - 1 / n, abs=1e-6)


def test_gini_equals_pairwise_form_on_random_vectors():
    p = torch.rand(20, 9, dtype=torch.float64).pow(2)
    p[::3, :4] = 0.0
    reference = torch.tensor([pairwise_gini(row) for row in p.tolist()], dtype=torch.float64)
    torch.testing.assert_close(gini(p), reference, rtol=0, atol=1e-12)


def test_metrics_with_padding_equal_unpadded_rows():
    lengths = [1, 3, 6, 10]
    p, padding = padded_rows(lengths, 10)
    threshold = 0.05
    for row, n in enumerate(lengths):
        alone = p[row : row + 1, :n]
        assert gini(p, padding)[row].item() == pytest.approx(gini(alone).item(), abs=1e-12)
        assert gini(p, padding)[row].item() == pytest.approx(pairwise_gini(alone[0].tolist()), abs=1e-12)
        assert zeros_ratio(p, padding, threshold)[row].item() == pytest.approx(
            zeros_ratio(alone, None, threshold).item()
        )
        assert entropy(p, padding)[row].item() == pytest.approx(entropy(alone).item(), abs=1e-12)
        assert support_90(p, padding)[row].item() == support_90(alone).item()


def test_mask_broadcasts_over_heads_and_queries():
    p, padding = padded_rows([4, 7], 7)
    maps = p[:, None, None, :].expand(2, 3, 5, 7)
    for metric in (gini, entropy, support_90):
        values = metric(maps, padding)
        assert values.shape == (2, 3, 5)
        torch.testing.assert_close(values, metric(p, padding)[:, None, None].expand(2, 3, 5))
    with pytest.raises(ValueError, match="key_padding_mask"):
        gini(maps, padding[:, :5])


def test_zeros_ratio_hand_cases():
    p = torch.tensor([[0.0, 0.5, 0.0, 0.5], [1e-7, 0.5, 0.5 - 1e-7, 0.0], [0.0, 1.0, 0.0, 0.0]])
    padding = torch.tensor([[False] * 4, [False] * 4, [False, False, True, True]])
    torch.testing.assert_close(zeros_ratio(p, padding, 0.0), torch.tensor([0.5, 0.25, 0.5]))
    torch.testing.assert_close(zeros_ratio(p, padding, 1e-6), torch.tensor([0.5, 0.5, 0.5]))


def test_zeros_ratio_of_a_negative_threshold_counts_no_key_not_the_padding():
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    assert zeros_ratio(p, torch.tensor([[False, False, True, True]]), -1.0).tolist() == [0.0]


@pytest.mark.parametrize("n", [7, 5000, 13294])
def test_gini_of_a_uniform_float32_map_is_never_below_zero(n: int):
    """Rounding put 1 - 2 sum(...) / N at about -1e-7 for these N, printed as '-0.000'."""
    assert gini(torch.full((1, n), 1.0 / n)).item() == 0.0


def test_gini_of_uniform_maps_is_within_float32_rounding_of_zero_on_several_threads():
    """A float32 matrix product summed the weighted keys: on 2 threads (CI's machine) a uniform row of 5000 keys
    had Gini 1.5e-5, and rows of 20000 keys 5e-5; torch's sums keep every row within a few float32 ulps of 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for n in (850, 1000, 5000, 13294, 20000):
            assert gini(torch.full((16, n), 1.0 / n)).max().item() <= 2.5e-7, n
    finally:
        torch.set_num_threads(threads)


def test_entropy_hand_cases():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0], [0.5, 0.5, 0.0, 0.0]])
    padding = torch.tensor([[False] * 4, [False] * 4, [False] * 4, [False, False, True, True]])
    expected = torch.tensor([math.log(4), 0.0, 1.5 * math.log(2), math.log(2)])
    torch.testing.assert_close(entropy(p, padding), expected)


@pytest.mark.parametrize("mass", [0.5, 0.9, 1.0])
def test_support_matches_subset_search(mass: float):
    p, padding = padded_rows([1, 2, 5, 8, 8, 8], 8)
    expected = [brute_support(row[:n], mass) for row, n in zip(p.tolist(), (~padding).sum(-1).tolist(), strict=True)]
    assert support_90(p, padding, mass).tolist() == expected
    with pytest.raises(ValueError, match="mass"):
        support_90(p, padding, 0.0)


def test_support_at_exact_mass_boundaries_and_rows_without_mass():
    """In float64 1 - 0.9 rounds below 0.1: the mass held is compared as defined, so [0.1, 0.9] needs one key."""
    p = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    assert support_90(p).tolist() == [1, 2, 0]
    assert support_90(p, mass=0.5).tolist() == [1, 1, 0]
    assert zeros_ratio(p, None, 0.0)[2].item() == 1.0  # a row without mass: every key is zero
    assert gini(p)[2].isnan()


def test_site_metrics_stacks_layers():
    weights = [torch.softmax(torch.randn(2, 3, 4, 6), -1) for _ in range(2)]
    mask = torch.zeros(2, 6, dtype=torch.bool)
    values = site_metrics(AttentionMaps(weights, mask, torch.tensor([[2, 3], [2, 3]]), (2, 3)), 1e-6)
    assert list(values) == list(METRICS)
    assert all(v.shape == (2, 2, 3, 4) for v in values.values())
    torch.testing.assert_close(values["gini"][1], gini(weights[1], mask))


def test_running_stats_merge_and_reduce_match_direct():
    data = torch.randn(3, 50, 4, dtype=torch.float64) * 0.01 + 0.9
    parts = [RunningStats.of(chunk, (1,)) for chunk in data.split([7, 30, 13], dim=1)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    torch.testing.assert_close(merged.mean, data.mean(1))
    torch.testing.assert_close(merged.m2 / merged.count, data.var(1, unbiased=False))
    pooled = merged.reduce(1)  # over the last dim
    torch.testing.assert_close(pooled.mean, data.mean((1, 2)))
    torch.testing.assert_close(pooled.m2 / pooled.count, data.var((1, 2), unbiased=False))
    mask = torch.rand(3, 50, 4) > 0.5
    masked = RunningStats.of(data, (1,), mask)
    for i, j in itertools.product(range(3), range(4)):
        selected = data[i, :, j][mask[i, :, j]]
        assert masked.count[i, j] == len(selected)
        assert masked.mean[i, j].item() == pytest.approx(selected.mean().item(), abs=1e-12)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(-1, keepdim=True)


def _random_maps(batch: int, sizes: list[tuple[int, int]], padded: tuple[int, int]) -> dict[str, AttentionMaps]:
    """A sparse decoder self site and a dense padded decoder cross site (2 layers, 3 heads, 5 queries)."""
    mask = torch.ones(batch, *padded, dtype=torch.bool)
    for b, (h, w) in enumerate(sizes):
        mask[b, :h, :w] = False
    mask = mask.flatten(1)
    keys = mask.shape[1]
    cross = [_normalised(torch.rand(batch, 3, 5, keys).masked_fill(mask[:, None, None], 0.0)) for _ in range(2)]
    self_maps = [_normalised(torch.relu(torch.randn(batch, 3, 5, 5)) + torch.eye(5)) for _ in range(2)]
    return {
        "decoder_self": AttentionMaps(self_maps),
        "decoder_cross": AttentionMaps(cross, mask, torch.tensor(sizes), padded, dense=True),
    }


def test_aggregator_result_is_json_and_merge_equals_single_stream():
    first, second = _random_maps(2, [(2, 3), (3, 4)], (3, 4)), _random_maps(1, [(3, 2)], (3, 2))
    one = MetricAggregator(keep_per_image=True)
    one.update(first)
    one.update(second)
    split_a, split_b = MetricAggregator(keep_per_image=True), MetricAggregator(keep_per_image=True)
    split_a.update(first)
    split_b.update(second)
    split_a.merge(split_b)
    result = one.result()
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    merged = split_a.result()
    assert merged["per_image"] == result["per_image"]
    assert [r["index"] for r in merged["per_image"]] == [0, 1, 2]
    for row, other in zip(result_rows(result), result_rows(merged), strict=True):
        assert row.keys() == other.keys()
        assert row["count"] == other["count"]
        assert row["mean"] == pytest.approx(other["mean"], abs=1e-12)
        assert row["std"] == pytest.approx(other["std"], abs=1e-12)
    assert result["num_images"] == 3
    assert all(info["paibb"] is None for info in result["sites"].values())
    assert result["sites"]["decoder_self"]["zero_threshold"] == 0.0  # sparse site: exact zeros
    assert result["sites"]["decoder_cross"]["zero_threshold"] == 1e-6  # dense site
    cross = result["sites"]["decoder_cross"]
    assert (cross["num_layers"], cross["num_heads"]) == (2, 3)
    assert cross["metrics"]["gini"]["per_head"]["count"] == [[15, 15, 15], [15, 15, 15]]
    assert cross["metrics"]["gini"]["per_layer"]["count"] == [45, 45]


def test_padded_query_rows_without_mass_do_not_turn_the_means_nan():
    """Padded queries are left out of the statistics, but an empty padded query row (NaN Gini) made the mean and std
    of the whole layer NaN."""
    mask = torch.tensor([[False] * 4, [False, False, True, True]])  # image 1: 1 x 2 valid cells of a 2 x 2 grid
    weights = torch.softmax(
        torch.randn(2, 3, 4, 4, dtype=torch.float64).masked_fill(mask[:, None, None], -math.inf), -1
    )
    weights[1, :, 2:] = 0.0  # the padded queries' rows hold no mass
    maps = AttentionMaps([weights], mask, torch.tensor([[2, 2], [1, 2]]), (2, 2), query_padding_mask=mask, dense=True)
    aggregator = MetricAggregator(keep_per_image=True)
    aggregator.update({"encoder_self": maps})
    result = aggregator.result()
    for name in METRICS:
        valid_maps = [  # brute force: every (image, head, valid query) map over the image's valid keys
            METRIC_FUNCTIONS[name](weights[b, h, q, ~mask[b]][None])
            for b in range(2) for h in range(3) for q in range(4) if not mask[b, q]
        ]  # fmt: skip
        values = torch.cat(valid_maps).double()
        per_layer = result["sites"]["encoder_self"]["metrics"][name]["per_layer"]
        assert per_layer["count"] == [18]
        assert per_layer["mean"][0] == pytest.approx(values.mean().item(), abs=1e-12)
        assert per_layer["std"][0] == pytest.approx(values.std(unbiased=False).item(), abs=1e-12)
        image_1 = values[12:].mean().item()
        assert result["per_image"][1]["metrics"]["encoder_self"][name][0] == pytest.approx(image_1, abs=1e-12)


def test_aggregator_pools_heads_exactly():
    maps = _random_maps(2, [(2, 3), (3, 4)], (3, 4))
    aggregator = MetricAggregator(zero_threshold=0.01)
    aggregator.update(maps)
    result = aggregator.result()
    values = site_metrics(maps["decoder_cross"], 0.01)["entropy"].double()  # (layers, B, heads, Lq)
    per_layer = result["sites"]["decoder_cross"]["metrics"]["entropy"]["per_layer"]
    per_head = result["sites"]["decoder_cross"]["metrics"]["entropy"]["per_head"]
    assert per_layer["mean"] == pytest.approx(values.mean((1, 2, 3)).tolist(), abs=1e-9)
    assert per_layer["std"] == pytest.approx(values.std((1, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert per_head["std"][1] == pytest.approx(values[1].std((0, 2), unbiased=False).tolist(), abs=1e-9)
    assert result["sites"]["decoder_cross"]["zero_threshold"] == 0.01
    rows = result_rows(aggregator.result())
    assert len(rows) == 2 * len(METRICS) * 2 * (3 + 1)  # sites x metrics x layers x (heads + mean)
    assert {r["head"] for r in rows} == {0, 1, 2, "mean"}
    table = result_markdown(aggregator.result())
    assert table.count("| decoder_cross |") == 2
    assert "paibb" not in table.splitlines()[0]


def test_analysis_table_shows_a_small_nonzero_zeros_ratio_as_measured():
    """analyze's table read "0.000 ± 0.001" for a zeros ratio of 2.9e-05 (sparsemax-trained encoder, 1e-6 threshold):
    a value measured nonzero printed as none. Here one key of 400 maps of 100 keys is below the threshold."""
    weights = torch.full((1, 4, 100, 100), 0.01)
    weights[0, 1, 7, 3] = 1e-7
    aggregator = MetricAggregator()
    aggregator.update({"decoder_self": AttentionMaps([weights], dense=True)})
    ratios = (weights <= 1e-6).double().mean(-1).flatten()  # one value per query map
    mean, std = ratios.mean().item(), ratios.std(unbiased=False).item()  # 2.5e-05, 5e-04
    row = next(line for line in result_markdown(aggregator.result()).splitlines() if line.startswith("| decoder_self"))
    printed_mean, printed_std = (float(text) for text in row.split("|")[4].split(" ± "))
    assert mean > 0 and printed_mean == pytest.approx(mean, rel=0.05) and printed_std == pytest.approx(std, rel=0.05)
