"""The report's figures (matplotlib, imported lazily with the Agg backend): accuracy per round
with confidence bands, vote agreement histograms, kept fractions, self-feedback precision, and
the collapse monitors. Each function draws one PNG from the rows :mod:`.report` computes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from selfimprove.core.io import atomic_path
from selfimprove.core.paths import sort_rounds


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _round_axis(ax, indices: Sequence[int]) -> None:
    ticks = sorted(set(indices))
    ax.set_xticks(ticks, [f"r{i}" for i in ticks])
    ax.set_xlabel("round")
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] - 0.5, ticks[0] + 0.5)


def plot_accuracy(
    series: Mapping[str, Mapping[str, list]],
    path: Path,
    metric: str,
    bands: Mapping[str, Mapping[str, Mapping[int, tuple[float, float]]]] | None = None,
) -> None:
    """One panel per eval set: accuracy per round, a line per prompt style (and maj@k), each
    with its confidence interval per round as a shaded band and error bars (``bands``: per set,
    per series, ``{round_index: (lo, hi)}``; rounds without one get none)."""
    plt = _pyplot()
    sets = sorted(series) or ["(no eval sets)"]
    ncols = min(3, len(sets))
    nrows = math.ceil(len(sets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, set_name in zip(axes.flat, sets, strict=False):
        indices: list[int] = []
        for label, points in sorted(series.get(set_name, {}).items()):
            xs, ys = zip(*sorted(points), strict=True)
            style = "--" if label.startswith("sc ") else "-"
            (line,) = ax.plot(xs, ys, style, marker="o", label=label)
            indices += xs
            band = (bands or {}).get(set_name, {}).get(label, {})
            have = [(x, y, band[x]) for x, y in zip(xs, ys, strict=True) if x in band]
            if have:
                bx = [x for x, _, _ in have]
                lo = [b[0] for _, _, b in have]
                hi = [b[1] for _, _, b in have]
                ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.12, lw=0)
                err = [
                    [max(0.0, y - b[0]) for _, y, b in have],
                    [max(0.0, b[1] - y) for _, y, b in have],
                ]
                ax.errorbar(
                    bx,
                    [y for _, y, _ in have],
                    yerr=err,
                    fmt="none",
                    ecolor=line.get_color(),
                    elinewidth=0.8,
                    capsize=2,
                )
        ax.set_title(set_name)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"accuracy ({metric})" if set_name == sets[0] else "")
        ax.grid(alpha=0.3)
        _round_axis(ax, indices or [0])
        if indices:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    title = "held-out accuracy by round"
    if bands:
        title += "\n(bands: confidence intervals, bootstrap over questions)"
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_agreement(stats: Mapping[str, Mapping], path: Path) -> None:
    """One panel per round: share of training questions per vote-agreement bin."""
    plt = _pyplot()
    names = sort_rounds(stats)
    n = max(1, len(names))
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False, sharey=True
    )
    for ax, name in zip(axes.flat, names, strict=False):
        s = stats[name]
        edges, counts = s["edges"], s["counts"]
        total = sum(counts) or 1
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        ax.bar(
            edges[:-1],
            [c / total for c in counts],
            width=widths,
            align="edge",
            edgecolor="white",
            color="tab:blue",
        )
        ax.axvline(
            s["mean_agreement"],
            color="tab:red",
            ls="--",
            lw=1,
            label=f"mean {s['mean_agreement']:.2f}",
        )
        ax.set_title(f"{name} ({s['n_questions']} questions)")
        ax.set_xlim(0, 1)
        ax.set_xlabel("majority share of the paths")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes.flat[0].set_ylabel("share of questions")
    if not names:
        axes.flat[0].text(0.5, 0.5, "no filtered rounds", ha="center", va="center")
    for ax in list(axes.flat)[len(names) :]:
        if names:
            ax.axis("off")
    fig.suptitle("vote agreement per round")
    fig.tight_layout()
    _save(fig, path)


def plot_kept(rows: Sequence[Mapping], path: Path) -> None:
    """Per round: share of questions and of paths kept for training, and mean agreement."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [r["round"] for r in rows]
    for key, label in (
        ("kept_fraction", "questions kept"),
        ("path_fraction", "paths kept"),
        ("mean_agreement", "mean agreement"),
    ):
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    notes = [
        (
            r["round"],
            r["kept_fraction"],
            "skipped" if r.get("skipped") else f"{r['n_train_examples']} ex.",
        )
        for r in rows
    ]
    _finish_fraction_plot(
        fig, ax, path, xs, notes, "fraction", "training data kept by the vote filter"
    )


def plot_feedback(rows: Sequence[Mapping], path: Path) -> None:
    """Per round with self-feedback: precision and recall of the model's "correct" verdicts
    against the gold, on the sampled answers (solid) and after refinement (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [r["round"] for r in rows]
    for key, label, style, marker, color in (
        ("precision", "precision (sampled)", "-", "o", "tab:blue"),
        ("recall", "recall (sampled)", "-", "o", "tab:orange"),
        ("final_precision", "precision (refined)", "--", "x", "tab:blue"),
        ("final_recall", "recall (refined)", "--", "x", "tab:orange"),
    ):
        ax.plot(xs, [r[key] for r in rows], style, color=color, marker=marker, label=label)
    notes = [(r["round"], r["precision"], f"{r['n_judged']} paths") for r in rows]
    _finish_fraction_plot(
        fig,
        ax,
        path,
        xs,
        notes,
        "verdict 'correct' vs gold",
        "self-feedback precision / recall per round",
    )


def _finish_fraction_plot(
    fig, ax, path: Path, xs: Sequence[int], notes: Sequence[tuple], ylabel: str, title: str
) -> None:
    """Annotate ``(x, y, text)`` notes, label a [0, 1] per-round axis, save the figure."""
    for x, y, text in notes:
        ax.annotate(
            text, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
        )
    ax.set_ylim(-0.02, 1.08)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _round_axis(ax, xs or [1])
    if notes:
        ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


#: the collapse monitors' panels: (row key, label) per panel
MONITOR_PANELS = (
    (
        "share",
        (
            ("mean_agreement", "mean agreement (majority share)"),
            ("no_answer_rate", "no-answer rate"),
            ("selected_precision", "kept majorities right (labels: analysis only)"),
            ("kept_precision", "kept paths right (labels: analysis only)"),
        ),
    ),
    (
        "answers per question",
        (("answer_entropy", "answer entropy (bits)"), ("distinct_answers", "distinct answers")),
    ),
    ("generated tokens", (("mean_path_tokens", "mean path length"),)),
)


def plot_monitors(rows: Sequence[Mapping], path: Path) -> None:
    """Per round: the collapse monitors of the sampled training paths in three panels (shares;
    answer entropy and distinct answers per question; mean path length). A monitor a round
    lacks (e.g. the label-based precisions without labels) is left out of that round."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(MONITOR_PANELS), figsize=(5.0 * len(MONITOR_PANELS), 3.6))
    xs_all = [r["round"] for r in rows]
    for ax, (ylabel, keys) in zip(axes, MONITOR_PANELS, strict=True):
        drawn = False
        for key, label in keys:
            pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=label)
                drawn = True
        if ylabel == "share":
            ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _round_axis(ax, xs_all or [1])
        if drawn:
            ax.legend(fontsize=7)
    if not rows:
        axes[0].text(0.5, 0.5, "no filtered rounds", ha="center", va="center")
    fig.suptitle("collapse monitors of the sampled training paths per round")
    fig.tight_layout()
    _save(fig, path)
