"""From MLflow to the paper's tables and figures, with a reproduction report.

    python -m analysis.report --tracking-uri sqlite:///mlflow.db --study quick --out report/

Writes table1.tex / .md / .csv, reproduction.md / .csv, report.md and figures (PNG and PDF):
fig2_val_curves_<dataset> (NECST vs IABF), fig3_markov_chain_<dataset>, axis_<param> per searched
hyperparameter. Prints the LaTeX table.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from PIL import Image

from analysis import entries, figures, layout, reproduction, sequential, significance
from analysis.fetch import FetchError, chooser, display_uri, metric_history, planned_arms
from iabf import metrics as M
from iabf import record as R
from iabf.config import exit_with, warnings_in_one_line
from iabf.storage import folder_problem


def searched_params(trials: pd.DataFrame) -> list[str]:
    """Numeric parameters that vary within a group (cell and arm) of the study's trials, seeds aside:
    what a search chose between, not what tells one arm from another."""
    groups = trials.groupby([R.CELL, R.ARM]) if {R.CELL, R.ARM} <= set(trials.columns) else [(None, trials)]
    return [c for c in trials.columns if c.startswith(R.PARAM) and c not in entries.NOT_CONFIG
            and pd.api.types.is_numeric_dtype(trials[c]) and not pd.api.types.is_bool_dtype(trials[c])
            and any(g[c].nunique() > 1 for _, g in groups)]


def axis_figures(runs: entries.Runs, cells: pd.DataFrame, out: Path) -> list[str]:
    """One axis plot per searched parameter: every search run, those ASHA stopped included, at the last
    epoch it reached, by the study's own metric (across several groups, cell and arm, relative to the best
    of its group, so scales are comparable). Edge notes per group: the value the study chose against the
    range it declared (its parent run's `params`)."""
    metric, mode = chooser(runs.params).values()
    value, group = R.METRIC_OF + metric, [R.CELL, R.ARM]
    pool = runs.everything[runs.everything[R.STOP_REASON].isin((R.COMPLETED, R.EARLY_STOPPED))]
    pool = pool[pool[R.PHASE] == R.SEARCH] if runs.confirmed else pool
    if value not in pool or pool.empty:
        return []
    by_id = runs.trials.set_index("run_id")
    chosen = {(by_id.at[ids[0], R.CELL], by_id.at[ids[0], R.ARM]): by_id.loc[ids[0]]
              for ids in cells.run_ids if ids and ids[0] in by_id.index}
    notes = []
    for param in searched_params(pool):
        df = pool.copy()
        several = df.groupby(group).ngroups > 1
        if several:
            df[value] = df[value] / df.groupby(group)[value].transform("min" if mode == "min" else "max")
        name = param.removeprefix(R.PARAM)
        only = chosen.get(tuple(df[group].iloc[0])) if not several else None
        fig = figures.axis_plot(df, param, value, f"{metric} / best of its cell" if several else
                                f"{metric} at the last epoch run", chosen=None if only is None else only.get(param),
                                stopped=df[R.STOP_REASON] == R.EARLY_STOPPED)
        figures.save(fig, out, f"axis_{name}")
        for key, g in pool.groupby(group):
            pick = chosen.get(key)
            value_chosen = None if pick is None or param not in pick or pd.isna(pick[param]) else float(pick[param])
            note = figures.edge_note(value_chosen, g[param].astype(float), name, R.declared_search(runs.params, name, key[1]))
            if note:
                notes.append(f"{key[0]} {key[1]}: {note}")
    return notes


def is_table1(cells: pd.DataFrame) -> bool:
    """Is the study shaped like the paper's Table 1 (cells of dataset, channel, code length, eps)?"""
    return {entries.axis_name(c) for c in entries.cell_columns(cells)} <= set(R.DEFAULT_CELL)


def panel_name(entry: pd.Series, axes: list[str]) -> str:
    """A figure panel's title: eps as the paper writes it, other axes as axis=value."""
    parts = [f"$\\epsilon$ = {entry[c]:g}" if entries.axis_name(c) in ("eps", "test_eps") else
             f"{entries.axis_name(c)}={R.value_text(entry[c])}" for c in axes]
    return ", ".join(parts) or f"$\\epsilon$ = {entry.eps:g}"


def csv_section(written: dict, out: Path, name: str, frame: pd.DataFrame, title: str, text: str, body: str) -> list[str]:
    """Write `frame` as out/name (recorded in `written`) and return its report section."""
    written[name] = out / name
    frame.to_csv(written[name], index=False)
    return ["", f"## {title}", "", text, "", body]


def against_section(written: dict, out: Path, cells: pd.DataFrame, path: str | Path) -> list[str]:
    """This study's entries beside another study's committed table (`--against`): a figure per dataset
    (test distortion against eps, every arm of both), the contrasts of each of its arms against each of
    ours per cell, from summary statistics. Comparable only if both ran the same budget and seeds."""
    other = significance.read_table(path)
    con = significance.against(cells, other)
    if con.empty:
        warnings.warn(f"--against {path}: no cell (dataset, code length, eps) in common with this study", stacklevel=2)
        return []
    mine = cells[significance.ENTRY]
    theirs = other[other.set_index(["dataset", "bits", "eps"]).index.isin(
        mine.set_index(["dataset", "bits", "eps"]).index)][significance.ENTRY]
    for (dataset, bits), rows in pd.concat([theirs, mine]).groupby(["dataset", "bits"]):
        fig = figures.summary_curves(rows, f"{entries.dataset_name(dataset)}, M = {bits}: this study and {Path(path).parent.name or path}",
                                     entries.arm_label)
        figures.save(fig, out, f"against_eps_{dataset}")
    return csv_section(written, out, "against.csv", con, f"Against {path}",
                       f"Each arm of {path} minus each arm of this study in the same cell (dataset, code length, eps), "
                       "in test distortion (negative: the other table's arm is better), with the 95% confidence "
                       "interval of the difference and Welch's t-test from the two tables' means, standard deviations "
                       "and seed counts; p (Holm): adjusted over every contrast of this section; * p < 0.05. The two "
                       "studies are comparable only at the same budget and seeds.", significance.contrasts_markdown(con))


def write_report(uri: str, study: str, out: str | Path, parent: str | None = None, quiet: bool = False,
                 against: str | Path | None = None) -> dict:
    """Everything the issue lists, written to `out`; returns {name: path}. Safe on partial studies:
    missing cells print '--' with a warning. against: another study's table1.csv to set beside it."""
    out = Path(out)
    runs = entries.gather(uri, study, parent)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    cells = entries.chosen(runs)
    markdown, rep = write_tables(cells, runs, out, written)
    cells = entries.with_cells(cells)
    write_figures(uri, cells, runs, out)
    notes = axis_figures(runs, cells, out)   # the axes of the search: every search run against what it searched
    report = (overview_lines(uri, study, cells, runs, markdown) + statistics_lines(cells, runs, out, written, against)
              + closing_lines(runs, notes, rep, out, written))
    written["report.md"] = out / "report.md"
    written["report.md"].write_text("\n".join(report))
    if not quiet:
        print(written["table1.tex"].read_text())
        for n in notes:
            print(f"note: {n}")
    return written


def write_tables(cells: pd.DataFrame, runs: entries.Runs, out: Path, written: dict) -> tuple[str, pd.DataFrame]:
    """table1.tex / .md / .csv and reproduction.csv / .md; returns (the Markdown table, the reproduction)."""
    arms = planned_arms(runs.params)
    # warns once per entry the study planned and did not get
    by = entries.chosen_by(**chooser(runs.params))   # the study's own metric and mode
    latex = layout.to_latex(cells, confirmed=runs.confirmed, planned=arms, provisional=runs.provisional, by=by)
    for label in sorted({c["cell"] for c in (runs.plan or {}).get("cells", [])} - set(runs.trials[R.CELL])):
        warnings.warn(f"missing cell: {label}, planned, has no {'confirmation' if runs.confirmed else 'completed'} run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # ... and the other formats need not say it again
        markdown = layout.to_markdown(cells, confirmed=runs.confirmed, planned=arms, provisional=runs.provisional, by=by)
    for name, text in (("table1.tex", latex), ("table1.md", markdown), ("table1.csv", layout.to_csv(cells))):
        written[name] = out / name
        written[name].write_text(text)
    rep = reproduction.reproduction(cells, reproduction.paper_table1())
    rep.attrs["by"] = by
    written["reproduction.csv"] = out / "reproduction.csv"
    rep.to_csv(written["reproduction.csv"], index=False)
    written["reproduction.md"] = out / "reproduction.md"
    written["reproduction.md"].write_text(reproduction.reproduction_markdown(rep))
    return markdown, rep


def write_figures(uri: str, cells: pd.DataFrame, runs: entries.Runs, out: Path) -> None:
    """Per dataset and channel, a panel per cell (Fig. 2's curves, Fig. 3's samples); an axis plot per
    numeric cell axis."""
    client = MlflowClient(uri)
    axes = entries.cell_columns(cells)
    by = [c for c in (R.CELL_PREFIX + "dataset", R.CELL_PREFIX + "channel") if c in axes] or ["dataset"]
    for key, dcells in cells.groupby(by):
        key = key if isinstance(key, tuple) else (key,)
        dataset = dcells.dataset.iloc[0]
        # a panel per cell of the block: by the axes that vary within it (Table 1: eps)
        panel_axes = [c for c in axes if c not in by and dcells[c].nunique() > 1]
        name = "_".join(str(k) for k in key) if len(key) == 1 or cells[by[1]].nunique() > 1 or key[1] != "bsc" \
            else str(key[0])
        panels = dcells.sort_values(panel_axes).assign(panel=[panel_name(r, panel_axes) for _, r in
                                                              dcells.sort_values(panel_axes).iterrows()])
        ids = panels.explode("run_ids")[["run_ids", "panel"]].rename(columns={"run_ids": "run_id"})
        hist = metric_history(uri, ids.run_id).merge(runs.trials[["run_id", "method", "arm", "seed"]], on="run_id") \
            .merge(ids, on="run_id")
        order = list(dict.fromkeys(panels.panel))
        hist = hist.sort_values("panel", key=lambda p: p.map(order.index), kind="stable")
        if hist.arm.nunique() > hist.method.nunique():   # variants of a method: every arm's curve
            figures.save(figures.arm_curves(hist, entries.dataset_name(dataset), {a: entries.arm_label(a) for a in hist.arm.unique()}),
                         out, f"val_curves_arms_{name}")
        hist = hist[hist.arm == hist.method]      # Fig. 2 is the paper's NECST against its IABF
        if {"necst", "iabf"} & set(hist.method):
            figures.save(figures.validation_curves(hist, entries.dataset_name(dataset)), out, f"fig2_val_curves_{name}")
        first = panels[panels.panel == panels.panel.iloc[0]]
        if grids := chain_samples(client, first, dataset):
            fig = figures.sample_grids(grids, f"Markov-chain samples, {' '.join(map(str, key))}, {first.panel.iloc[0]} "
                                              "(rows: every 1/9 of the chain)")
            figures.save(fig, out, f"fig3_markov_chain_{name}")
    for column in axes:   # the ablation's own figure: test distortion against a numeric cell axis, per arm
        if entries.axis_name(column) not in ("dataset", "channel") and cells[column].nunique() > 1 and \
                pd.api.types.is_numeric_dtype(cells[column]):
            others = [c for c in axes if c != column and cells[c].nunique() > 1]
            figures.save(figures.cell_axis_plot(cells, column, others, entries.arm_label), out,
                         f"axis_cell_{entries.axis_name(column)}")


def seeds_sections(written: dict, out: Path, cells: pd.DataFrame, con: pd.DataFrame, runs: entries.Runs) -> list[str]:
    """An adaptive study's decisions, replayed from its runs (analysis/sequential.py); a fixed-seed study's
    undecided contrasts with the seeds they would need."""
    design = sequential.Design.parse(runs.params.get(R.ADAPTIVE))
    if design is not None:
        metric, mode = chooser(runs.params).values()
        test = M.TESTED.get(metric, M.TEST_DISTORTION)
        methods = {f"{c} | {a}": m for c, a, m in zip(runs.trials[R.CELL], runs.trials[R.ARM], runs.trials.method)}
        frame = sequential.adaptive_frame(design, sequential.study_values(runs.trials, test),
                                          sequential.family(methods), mode)
        stopped = frame.attrs["stopped"]
        return csv_section(
            written, out, "adaptive.csv", frame, "The adaptive confirmation",
            f"Seeds decided by the data (AdaStop's group-sequential permutation test, analysis/sequential.py): "
            f"{design.batch} seeds per arm at each look, up to {design.max}; the family-wise error over these {len(frame)} comparisons and every "
            f"look is at most {design.alpha:g} ({design.spending} spending over the looks). Decisions on {test} ({'lower' if mode == 'min' else 'higher'} is "
            "better), replayed from the runs: a look used only the seeds up to it. The interval is Welch's "
            "fixed-sample 95% interval on the seeds of the deciding look: it does not account for the sequential "
            "design. For an undecided comparison: the difference the maximum could detect with 80% power, and the "
            f"seeds per arm that would detect the observed one (t-tests at alpha / {len(frame)})."
            + (f" The looks stopped early: {stopped}." if stopped else "")
            + (f" The study took its looks with {design.test}, since replaced (docs/seeds.md): its seeds are the ones "
               "that test asked for, and the decisions here are the current test's on them ('pending': it would "
               "have asked for more)." if design.test != sequential.CURRENT_TEST else ""),
            sequential.adaptive_markdown(frame, design, test))
    open_ = sequential.power_frame(con) if len(con) else con
    if not len(open_):
        return []
    return csv_section(written, out, "power.csv", open_, "Seeds an undecided contrast would need",
                       "Each contrast above that Holm leaves undecided: the difference its seeds could detect with 80% "
                       f"power, and the seeds per arm that would detect the observed difference, for two-sided t-tests "
                       f"at 0.05 / {int(con.p_value.notna().sum())} (Holm's first step), from the observed seed-to-seed "
                       "spread. A rerun on that many seeds is a new test: an adaptive confirmation (`adaptive:` in the "
                       "study file) decides with the error controlled.",
                       sequential.power_markdown(open_, entries.cell_columns(con) or ["dataset", "bits", "eps"]))


def chain_samples(client: MlflowClient, entries_: pd.DataFrame, dataset: str) -> dict:
    """Each entry's Markov-chain samples (its first run's markov_chain.png), by arm label; an entry without
    them (a search run: a table without confirmation) or whose file the artifact store lost is left out."""
    grids = {}
    for row in entries_.itertuples():
        if "markov_chain.png" not in {a.path for a in client.list_artifacts(row.run_ids[0])}:
            continue
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(row.run_ids[0], "markov_chain.png", d)
            except Exception as e:  # an artifact store that lost a file must not sink the report
                warnings.warn(f"no Markov-chain samples for {dataset} {row.arm}: {e}", stacklevel=3)
                continue
            grids[entries.arm_label(row.arm)] = np.asarray(Image.open(path).convert("L"))
    return grids


def overview_lines(uri: str, study: str, cells: pd.DataFrame, runs: entries.Runs, markdown: str) -> list[str]:
    """report.md's head: what ran, the budget, the table and the chosen configurations."""
    axes = entries.cell_columns(cells)
    trials, completed, confirmed = runs.trials, runs.completed, runs.confirmed
    phases = (f"{len(trials)} confirmation runs (every configuration chosen in the search, on every seed) and "
              f"{len(completed) - len(trials)} completed search runs" if confirmed else
              f"**Provisional**: {len(trials)} completed search runs; the study's confirmation phase has not run "
              "(finish it with `python studies/ablation.py --space <its file> --resume`)" if runs.provisional else
              f"{len(trials)} completed runs (search results: no confirmation phase)")
    budget = [f"- `{k}`: {v}" for k, v in sorted(runs.params.items()) if k.startswith(("fixed.", "by_dataset."))
              and not k.endswith(".data_dir")]
    shape = ", ".join(f"{entries.axis_name(c)} ({cells[c].nunique()})" for c in axes)
    report = [f"# Study {study}", "", f"{phases}; tracking: {display_uri(uri)}", "",
              f"{cells[axes].drop_duplicates().shape[0]} cells: {shape} values; an entry is a cell and an arm.", "",
              "## Budget and fixed values", "", "Every trial's, from the study's parent run (by_dataset: per dataset, "
              "over fixed; anything else is iabf/config.py's default).", "", *(budget or ["- the defaults"]), "",
              "## Table 1" if is_table1(cells) else "## Table", "", markdown,
              *(["## Per arm, across the ablation", "", "Test distortion, mean ± std over seeds; each entry is one "
                 "cell of the table above.", "", grids] if (grids := layout.arm_grids(cells)) else []),
              "## The chosen configurations", "",
              "| cell | arm | configuration | n | val | test | std |", "|---|---|---|---|---|---|---|"]
    return report + [f"| {c.cell} | {c.arm} | {c.config} | {c.n} | "
                     f"{c.val:.4g} | {c.test:.4g} | {c.std:.3g} |" for c in cells.itertuples()]


def statistics_lines(cells: pd.DataFrame, runs: entries.Runs, out: Path, written: dict,
                     against: str | Path | None) -> list[str]:
    """report.md's statistics sections, each with its CSV: the contrasts, their tally, the seeds (adaptive
    decisions or what an undecided contrast would need), each cell axis, and `--against`."""
    report = []
    con = significance.contrasts(cells)
    if len(con):
        report += csv_section(written, out, "contrasts.csv", con, "Each arm against the baselines",
                              "Test distortion of each arm minus that of NECST, of its own method by the paper's "
                              "equations and of the methods before it in the same version (negative: the arm is "
                              "better), with the 95% confidence interval of the difference and Welch's t-test over "
                              "seeds; p (Holm): adjusted for every contrast in this table; * p < 0.05.",
                              significance.contrasts_markdown(con))
        counts = significance.tally(con)
        report += csv_section(written, out, "tally.csv", counts, "Across cells",
                              "Per arm and baseline: the cells where the arm's test distortion is significantly "
                              "lower (better) or higher (worse) after Holm's adjustment over every contrast of the "
                              "report (p < 0.05); the cells where its mean is lower at all; the same counts without "
                              "the adjustment; and the mean relative difference (arm over baseline, minus 1; "
                              "negative: better).", significance.tally_markdown(counts))
    report += seeds_sections(written, out, cells, con, runs)
    for column in significance.contrasted_axes(cells):   # what one setting of an ablation does, all else equal
        axis = entries.axis_name(column)
        con = significance.axis_contrasts(cells, column)
        if len(con):
            report += csv_section(written, out, f"axis_{axis}_contrasts.csv", con, f"Across {axis}",
                                  f"Each arm at each {axis} against the same arm at {axis}="
                                  f"{', '.join(con.baseline.unique())} (the column `against`), every "
                                  f"other cell axis equal: test distortion difference (negative: lower), its 95% "
                                  f"confidence interval and Welch's t-test over seeds; p (Holm): adjusted over these "
                                  f"contrasts; * p < 0.05. A contrast that recurs unchanged in several blocks is "
                                  f"one row (its other axis joined), counted once." + significance.inert_text(con, axis),
                                  significance.axis_contrasts_markdown(con, axis))
    if against is not None:
        report += against_section(written, out, cells, against)
    return report


def closing_lines(runs: entries.Runs, notes: list[str], rep: pd.DataFrame, out: Path, written: dict) -> list[str]:
    """report.md's tail: the search-range notes, failed trials, the cost per cell (cost.csv), the
    reproduction against the paper and the figures."""
    spent = entries.cost(runs.everything, runs.plan)
    failed = runs.everything[runs.everything[R.STOP_REASON] == R.FAILED]
    written["cost.csv"] = out / "cost.csv"
    spent.to_csv(written["cost.csv"], index=False)
    report = ["", "## Notes on the search ranges", ""]
    report += [f"- {n}" for n in notes] or ["- no searched hyperparameter's chosen value is at an edge of its range"]
    report += ["", "## Failed trials", ""]
    report += [f"- {f.run_name} ({f.run_id}): {f.failure or 'no reason recorded'}" for f in failed.itertuples()] or ["- none"]
    report += ["", "## Cost per cell (every run, early-stopped ones included)", "",
               "Trial-epochs count one per seed and epoch. The full grid is every configuration on every seed, "
               "to the end, without early stopping.", "",
               "| cell | runs | search epochs | confirmation epochs | full grid epochs | spent / full grid | trial-hours | GPU-hours |",
               "|---|---|---|---|---|---|---|---|"]
    report += [f"| {c.cell} | {c.runs} | {c.search_epochs:.0f} | {c.confirm_epochs:.0f} | "
               f"{'--' if math.isnan(c.full_grid_epochs) else f'{c.full_grid_epochs:.0f}'} | "
               f"{'--' if math.isnan(c.of_full_grid) else f'{c.of_full_grid:.0%}'} | {c.trial_hours:.3f} | {c.gpu_hours:.3f} |"
               for c in spent.itertuples()]
    report += ["", reproduction.reproduction_markdown(rep).replace("# Reproduction", "## Reproduction", 1)]
    pngs = sorted(p.name for p in out.glob("*.png"))
    report += ["", "## Figures", ""] + [f"![{name[:-4]}]({name})" for name in pngs]
    return report


def check_out(out: Path) -> None:
    """An output folder that can be made: it, or its nearest existing parent, is a writable folder."""
    if problem := folder_problem(out):
        raise FetchError(f"--out {out}: {problem}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///mlflow.db")
    p.add_argument("--study", required=True, help="the study's name (its MLflow experiment)")
    p.add_argument("--out", default="report", help="output folder (default: %(default)s)")
    p.add_argument("--parent", default=None, help="a study run id; default: the study's latest run")
    p.add_argument("--against", default=None, metavar="TABLE1_CSV",
                   help="another study's table1.csv (e.g. docs/table1_cpu/table1.csv, same budget and seeds): its "
                        "arms beside this study's, per cell, in a figure per dataset and contrasts (against.csv)")
    args = p.parse_args(argv)
    warnings_in_one_line()
    try:
        check_out(Path(args.out))
        R.check_store(args.tracking_uri)
        if args.against is not None:
            significance.read_table(args.against)      # a bad file fails before anything is written
        written = write_report(args.tracking_uri, args.study, args.out, args.parent, against=args.against)
    except (R.StoreError, entries.TableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except entries.NothingToReport as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files and figures to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_with(main())
