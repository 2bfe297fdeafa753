"""Figures as pure functions: DataFrames (or images) in, a matplotlib Figure out; `save` writes PNG+PDF."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.entries import METHOD_NAMES, METHODS  # noqa: E402
from iabf.record import CELL_PREFIX, PARAM, value_text  # noqa: E402

COLORS = {"necst": "tab:red", "abf": "tab:blue", "iabf": "tab:green"}   # the paper's Fig. 2: red vs green


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return paths


def panels(curves: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """curves with a `panel` column (one panel per cell: given, or "eps = 0.1" from eps), and the
    panels in order (as given: the caller sorts them by their cells)."""
    if "panel" not in curves:
        curves = curves.assign(panel=[f"$\\epsilon$ = {e:g}" for e in curves.eps])
        return curves, [f"$\\epsilon$ = {e:g}" for e in sorted(set(curves.eps))]
    return curves, list(dict.fromkeys(curves.panel))


def grid_of(n: int, width: float, height: float):
    """n panels, at most 4 a row."""
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def validation_curves(curves: pd.DataFrame, dataset: str, methods=("necst", "iabf")):
    """Fig. 2: validation distortion against training epoch, one panel per eps (or per cell).
    curves: columns method, eps (or panel), seed, step, value (the selected configuration's runs)."""
    curves, names = panels(curves)
    fig, axes = grid_of(len(names), 3.2, 2.8)
    for ax, panel in zip(axes, names):
        for method in methods:
            sel = curves[(curves.panel == panel) & (curves.method == method)]
            for _, run in sel.groupby("seed"):
                ax.plot(run.step, run.value, color=COLORS[method], alpha=0.3, lw=0.8)
            if len(sel):
                mean = sel.groupby("step").value.mean()
                ax.plot(mean.index, mean.values, color=COLORS[method], lw=1.6, label=METHOD_NAMES[method])
        ax.set_title(f"{dataset}, {panel}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation distortion")
    axes[0].legend()
    fig.tight_layout()
    return fig


def order(method: str) -> int:
    """The paper's methods first, in its order; any other (separation) after them."""
    return METHODS.index(method) if method in METHODS else len(METHODS)


def arm_curves(curves: pd.DataFrame, dataset: str, labels: dict | None = None):
    """Every arm's validation distortion against epoch (mean over seeds, shaded min..max), one panel
    per eps, zoomed past the first quarter of training where the arms separate.
    curves: columns arm, method, eps, seed, step, value."""
    labels = labels or {}
    curves, names = panels(curves)
    fig, axes = grid_of(len(names), 5.5, 4)
    styles = {"necst": "-", "abf": "--", "iabf": "-."}
    for ax, panel in zip(axes, names):
        sel = curves[curves.panel == panel]
        start = sel.step.max() // 4
        method_of = sel.drop_duplicates("arm").set_index("arm").method
        for i, arm in enumerate(sorted(method_of.index, key=lambda a: (order(method_of[a]), a))):
            run = sel[(sel.arm == arm) & (sel.step >= start)].groupby("step").value
            method = method_of[arm]
            line, = ax.plot(run.mean().index, run.mean().values, styles.get(method, "-"), lw=1.4,
                            color=plt.cm.tab20(i % 20), label=labels.get(arm, arm))
            ax.fill_between(run.min().index, run.min().values, run.max().values, color=line.get_color(), alpha=0.12)
        ax.set_title(f"{dataset}, {panel}: every arm (mean over seeds)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("validation distortion")
    fig.tight_layout()
    return fig


def cell_axis_plot(cells: pd.DataFrame, column: str, others: list[str], label=lambda arm: arm, level: float = 0.95):
    """An ablation's figure: test distortion (mean over seeds, with its `level` t-interval) against a
    numeric cell axis, a line per arm, a panel per combination of the other cell axes that vary.
    cells: analysis.entries.select_cells' entries (cell.<axis> columns, arm, method, test, tests)."""
    from scipy import stats

    name = column.removeprefix(CELL_PREFIX)
    groups = list(cells.groupby(others, sort=True)) if others else [((), cells)]
    fig, axes = grid_of(len(groups), 4, 3)
    styles = {"necst": "o-", "abf": "s--", "iabf": "^-."}
    for ax, (key, g) in zip(axes, groups):
        key = key if isinstance(key, tuple) else (key,)
        for i, (arm, a) in enumerate(sorted(g.groupby("arm"), key=lambda p: (METHODS.index(p[1].method.iloc[0])
                                                                           if p[1].method.iloc[0] in METHODS else 9, p[0]))):
            a = a.sort_values(column)
            half = [stats.t.ppf(0.5 + level / 2, len(t) - 1) * np.std(t, ddof=1) / np.sqrt(len(t)) if len(t) > 1 else 0.0
                    for t in a.tests]
            method = a.method.iloc[0]
            ax.errorbar(a[column].astype(float), a.test, yerr=half, fmt=styles.get(method, "o-"), capsize=3, lw=1.2,
                        ms=4, color=COLORS.get(method) if arm == method else plt.cm.tab10(i % 10), label=label(arm))
        if pd.Series(cells[column]).astype(float).gt(0).all() and cells[column].astype(float).max() / \
                max(cells[column].astype(float).min(), 1e-300) >= 8:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(cells[column].astype(float).unique()), map(lambda v: f"{v:g}", sorted(
                cells[column].astype(float).unique())))
        ax.set_title(", ".join(f"{o.removeprefix(CELL_PREFIX)}={value_text(v)}" for o, v in zip(others, key)) or name,
                     fontsize=9)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test distortion (mean, {level:.0%} CI)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def summary_curves(entries: pd.DataFrame, title: str, label, level: float = 0.95):
    """Test distortion against eps, one line per arm, from summary statistics (mean, sample std, n:
    a t-interval at `level`), so that another study's committed table can share the axes.
    entries: columns arm, eps, test, std, n (an arm named "... bound": dashed, a bound, not a scheme)."""
    from scipy import stats

    fig, ax = plt.subplots(figsize=(5, 3.6))
    # COLORS takes tab10's blue, green and red; the other arms get the rest
    spare = iter([c for i, c in enumerate(plt.cm.tab10.colors) if i not in (0, 2, 3)] + list(plt.cm.Dark2.colors))
    for arm, a in entries.groupby("arm", sort=False):
        a = a.sort_values("eps")
        half = [stats.t.ppf(0.5 + level / 2, n - 1) * s / np.sqrt(n) if n > 1 and np.isfinite(s) else 0.0
                for s, n in zip(a["std"], a["n"].astype(int))]
        dashed = "bound" in arm
        ax.errorbar(a.eps, a.test, yerr=half, fmt="o--" if dashed else "o-", capsize=3, lw=1.2, ms=4,
                    color=COLORS.get(arm) or next(spare, "black"), label=label(arm))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("$\\epsilon$ (channel noise)")
    ax.set_ylabel(f"test distortion (mean, {level:.0%} CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sample_grids(images: dict, title: str):
    """Fig. 3: a Markov-chain sample grid per method, side by side. images: method -> HxW(x3) array."""
    fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4), squeeze=False)
    for ax, (method, img) in zip(axes[0], images.items()):
        ax.imshow(np.asarray(img), cmap="gray", interpolation="nearest")
        ax.set_title(METHOD_NAMES.get(method, method))
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def edge_note(chosen: float, tried: pd.Series, param: str, declared: tuple[str, list] | None = None) -> str | None:
    """A note when the value the study chose is at the edge of what it searched: for a grid (or choice,
    or where the record does not say: the values tried), its lowest or highest value; for a distribution
    (iabf.record.declared_search), the most extreme value tried that also lies in the outer tenth of the
    declared range (on the log scale for loguniform). `tried`: every search run's value, the runs ASHA
    stopped included, so a grid whose other values were stopped early is still judged."""
    if chosen is None or not math.isfinite(chosen) or tried.nunique() < 2 and declared is None:
        return None
    kind, args = declared or ("grid", [tried.min(), tried.max()])
    if kind in ("grid", "choice"):
        lo, hi = min(args), max(args)
        if chosen not in (lo, hi) or lo == hi:
            return None
        return f"chosen {param} = {chosen:g} is at the edge of the searched range [{lo:g}, {hi:g}]"
    if chosen not in (tried.min(), tried.max()):
        return None
    lo, hi = float(args[0]), float(args[1]) - (kind == "randint")   # randint's high is exclusive
    scale = np.log if kind == "loguniform" else (lambda v: v)
    where = (scale(chosen) - scale(lo)) / (scale(hi) - scale(lo)) if hi > lo else 0.5
    if 0.1 <= where <= 0.9:
        return None
    return (f"chosen {param} = {chosen:g} is near the edge of the declared range [{lo:g}, {hi:g}] ({kind}): in "
            f"its outer tenth, and the most extreme value tried")


def axis_plot(runs: pd.DataFrame, param: str, value: str, label: str, chosen: float | None = None,
              stopped: pd.Series | None = None):
    """The study's metric at the last epoch each search run reached (the rung ASHA stopped it at, or its
    end) against one searched hyperparameter, one point per run (hollow: stopped early), and the chosen
    value as a dashed line."""
    x, y = runs[param].astype(float), runs[value].astype(float)
    stopped = stopped if stopped is not None else pd.Series(False, index=runs.index)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.scatter(x[~stopped], y[~stopped], s=14, alpha=0.7, label="ran to its end")
    if stopped.any():
        ax.scatter(x[stopped], y[stopped], s=14, facecolors="none", edgecolors="tab:blue", label="stopped early (ASHA)")
        ax.legend(fontsize=6)
    if (x > 0).all() and x.max() / max(x.min(), 1e-300) >= 20:
        ax.set_xscale("log")
    if chosen is not None:
        ax.axvline(chosen, color="tab:green", ls="--", lw=1)
    ax.set_xlabel(param.removeprefix(PARAM))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
