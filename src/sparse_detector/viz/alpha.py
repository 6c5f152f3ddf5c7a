"""Learned α of α-entmax attention: the last values as a layer × head heat map, and every head's α over steps.

Input: the ``alpha`` entry of ``metrics.jsonl`` records, ``{attention module name: [α per head]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .curves import run_colors
from .figure import count_axis

ALPHA_RANGE = (1.0, 2.0)  # α of α-entmax: softmax to sparsemax (a learned α lies between: attention.entmax)
ALPHA_COLORMAP = "magma"


def _module_label(name: str) -> str:
    return name.removesuffix(".activation")


def alpha_history(records: Sequence[Mapping]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Steps of the ``init``, ``train`` and ``epoch`` records that log α (one per step), and per module an array
    (steps, heads) of α. The ``init`` record holds α as training started (step 0: ``alpha_init``, or the weights of
    ``--init-from``; runs trained before it was logged start at their first logged step). Epoch records count too: a
    run shorter than ``train.log_every`` steps logs α only there."""
    by_step = {r["step"]: r for r in records if r.get("type") in ("init", "train", "epoch") and r.get("alpha")}
    logged = [by_step[step] for step in sorted(by_step)]
    modules = list(logged[0]["alpha"]) if logged else []
    return [r["step"] for r in logged], {m: np.array([r["alpha"][m] for r in logged]) for m in modules}


def value_decimals(values: np.ndarray, least: int = 3, most: int = 6) -> int:
    """Decimals that tell apart values spread over a range as small as theirs (early in training α moves by 1e-4,
    and every cell read 1.500 under colours that differ)."""
    finite = values[np.isfinite(values)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    if spread <= 0:
        return least
    return int(np.clip(np.ceil(-np.log10(spread)) + 1, least, most))


def alpha_figure(records: Sequence[Mapping], title: str = "") -> Figure:
    """Heat map of the last logged α (rows: attention modules in the model's order, columns: heads) beside one plot
    per module of its heads' α over training steps, from its initial value where the records hold it."""
    steps, history = alpha_history(records)
    if not history:
        raise ValueError("no learnable α in these records: the run has no alpha_entmax attention")
    modules = list(history)
    heads = max(values.shape[1] for values in history.values())
    last = np.full((len(modules), heads), np.nan)
    for row, module in enumerate(modules):
        last[row, : history[module].shape[1]] = history[module][-1]
    figure = Figure(figsize=(12, 1.1 * len(modules) + 2.0), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[1.2, 1])
    heat = left.subplots()
    # α's whole range, the same in every run's figure: scaled to the values, heads 0.003 apart were black and yellow
    norm = Normalize(*ALPHA_RANGE)
    image = heat.imshow(last, cmap=ALPHA_COLORMAP, norm=norm, aspect="auto")
    decimals = value_decimals(last)
    for (row, head), value in np.ndenumerate(last):
        if np.isfinite(value):
            red, green, blue, _ = colormaps[ALPHA_COLORMAP](norm(value))
            color = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # legible on the cell
            rotation = 90 if heads > 4 else 0  # upright numbers would overlap in narrow cells
            text = f"{value:.{decimals}f}"
            heat.text(head, row, text, ha="center", va="center", fontsize=7, color=color, rotation=rotation)
    heat.set_xticks(range(heads), [str(h) for h in range(heads)])
    heat.set_yticks(range(len(modules)), [_module_label(m) for m in modules], fontsize=7)
    heat.set_xlabel("head")
    heat.set_title(f"α at step {steps[-1]} (1 = softmax, 2 = sparsemax; numbers tell close heads apart)", fontsize=9)
    colorbar = left.colorbar(image, ax=heat, label="α")
    colorbar.ax.ticklabel_format(axis="y", useOffset=False)  # α itself, never "+1.5" and an offset
    colors = run_colors([str(h) for h in range(heads)])
    lines = right.subplots(len(modules), 1, sharex=True, squeeze=False)[:, 0]
    for axes, module in zip(lines, modules, strict=True):
        for head in range(history[module].shape[1]):
            marker = "o" if len(steps) == 1 else None  # a line of one point would not show
            axes.plot(
                steps,
                history[module][:, head],
                color=colors[str(head)],
                linewidth=1,
                marker=marker,
                label=f"head {head}",
            )
        axes.set_title(_module_label(module), fontsize=8)
        axes.set_ylabel("α", fontsize=8)
        axes.ticklabel_format(axis="y", useOffset=False)  # α itself on every panel, never "+1.5" and an offset
    handles, labels = lines[-1].get_legend_handles_labels()  # under the plots: inside, it covered the last one
    right.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=min(heads, 4), frameon=False)
    count_axis(lines[-1], "step")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
