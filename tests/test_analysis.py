"""analysis/: cell selection, LaTeX/Markdown/CSV, significance, reproduction report, figures, and
fetching from a real MLflow store filled through the MLflow client with known values."""
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from analysis import entries, figures, layout, reproduction, significance
from analysis.fetch import FetchError, fetch_runs
from analysis.report import main as report_main
from runner import template_store
from iabf import metrics as M
from iabf import record as R
from iabf.config import Config
from studies.tracking import config_hash

ROOT = Path(__file__).resolve().parents[1]


def trial(method, eps, test, val=None, seed=0, lam=0.01, dataset="mnist", stop="completed"):
    cfg = Config(dataset=dataset, method=method, eps=eps, lam=lam if method == "iabf" else 0.01, seed=seed)
    return {"dataset": dataset, "bits": cfg.bits, "method": method, "eps": eps,
            "lam": lam if method == "iabf" else np.nan, "K": 5, "seed": seed, "stop_reason": stop,
            "val": test if val is None else val, "test": test, "run_id": f"{method}{eps}{lam}{seed}",
            "config_hash": config_hash(cfg.to_dict()), "param.lam": cfg.lam}


def test_latex_against_the_expected_string():
    df = pd.DataFrame([trial("necst", 0.1, 14.5), trial("abf", 0.1, 13.4), trial("iabf", 0.1, 13.25),
                       trial("necst", 0.2, 22.5), trial("abf", 0.2, 22.0), trial("iabf", 0.2, 22.1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete table warns about nothing
        tex = layout.to_latex(entries.select_cells(df))
    expected = r"""\begin{table}[t]
\centering
\begin{tabular}{lcc}
\toprule
MNIST & $\epsilon=0.1$ & $\epsilon=0.2$ \\
\midrule
100-bit NECST & 14.500 & 22.500 \\
100-bit ABF & 13.400 & \textbf{22.000} \\
100-bit IABF & \textbf{13.250} & 22.100 \\
\bottomrule
\end{tabular}
\caption{""" + layout.caption(entries.select_cells(df)) + r"""}
\label{tab:table1}
\end{table}
"""
    assert tex == expected
    assert "one seed per cell (n = 1)" in tex


def test_bold_and_significance_markers_on_a_known_case():
    rows = []
    for s, (n, a, i) in enumerate([(15.0, 13.1, 13.0), (15.1, 13.3, 13.1), (15.2, 13.0, 13.2)]):
        rows += [trial("necst", 0.1, n, seed=s), trial("abf", 0.1, a, seed=s), trial("iabf", 0.1, i, seed=s)]
    cells = entries.select_cells(pd.DataFrame(rows)).set_index("method")
    assert cells.loc["iabf", "best"] and not cells.loc["abf", "best"]
    assert cells.loc["abf", "tied"] and cells.loc["abf", "p_value"] > 0.5     # 13.13 vs 13.10: a tie
    assert not cells.loc["necst", "tied"] and cells.loc["necst", "p_value"] < 1e-3
    assert (cells.n == 3).all()
    tex = layout.to_latex(cells.reset_index())
    assert r"\textbf{13.100 $\pm$ 0.100}" in tex
    assert r"13.133 $\pm$ 0.153$^\dagger$" in tex and r"15.100 $\pm$ 0.100 " in tex
    assert "(n = 3 per cell)" in tex
    md = layout.to_markdown(cells.reset_index())
    assert "**13.100 ± 0.100**" in md and "13.133 ± 0.153 †" in md


def test_lambda_is_chosen_by_validation_not_by_test():
    df = pd.DataFrame([trial("iabf", 0.1, test=20.0, val=10.0, lam=0.1),   # best validation
                       trial("iabf", 0.1, test=5.0, val=11.0, lam=0.01),   # best test: must not win
                       trial("necst", 0.1, 30.0), trial("abf", 0.1, 30.0)])
    cells = entries.select_cells(df).set_index("method")
    assert cells.loc["iabf", "lam"] == 0.1 and cells.loc["iabf", "test"] == 20.0


def test_missing_cells_print_dashes_and_warn():
    df = pd.DataFrame([trial("necst", 0.1, 14.5), trial("iabf", 0.1, 13.25), trial("iabf", 0.2, 22.0)])
    with pytest.warns(UserWarning, match="missing cell: mnist 100-bit abf eps 0.1"):
        tex = layout.to_latex(entries.select_cells(df))
    assert "100-bit ABF & -- & -- \\\\" in tex and "100-bit NECST & 14.500 & -- \\\\" in tex
    assert "--" in layout.to_markdown(entries.select_cells(df))
    assert layout.to_latex(entries.select_cells(df.iloc[:0])).count("tabular") == 2   # empty: no crash


def test_reproduction_deltas_and_ordering_on_known_numbers():
    df = pd.DataFrame([trial("necst", 0.1, 15.439), trial("abf", 0.1, 13.369), trial("iabf", 0.1, 13.0)])
    rep = reproduction.reproduction(entries.select_cells(df), reproduction.paper_table1()).set_index(["dataset", "method", "eps"])
    assert rep.loc[("mnist", "necst", 0.1), "abs_diff"] == pytest.approx(1.0)
    assert rep.loc[("mnist", "necst", 0.1), "rel_diff"] == pytest.approx(1.0 / 14.439)
    assert rep.loc[("mnist", "abf", 0.1), "abs_diff"] == pytest.approx(0.0)
    assert rep.loc[("mnist", "iabf", 0.1), "paper"] == 13.251
    assert len(reproduction.paper_table1()) == 48
    md = reproduction.reproduction_markdown(rep.reset_index())
    assert "| mnist | 100 | necst | necst | 0.1 | 15.439 | 1 | 14.439 | +1.000 | +6.9% | yes |" in md
    assert "| mnist | 100 | 0.1 | paper | yes | yes |" in md   # 13.0 <= 13.369 <= 15.439, and the paper's
    flipped = pd.DataFrame([trial("necst", 0.1, 12.0), trial("abf", 0.1, 13.0), trial("iabf", 0.1, 14.0)])
    order = reproduction.ordering(entries.select_cells(flipped), "test")
    assert order.test_ordered.tolist() == [False]


@pytest.fixture
def store(tmp_path):
    """A real MLflow store written through the client, as studies/tracking.py writes it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("known")
    parent = client.create_run(exp, tags={"study": "known"}).info.run_id
    png = tmp_path / "markov_chain.png"
    Image.fromarray((np.random.default_rng(0).random((30, 30)) * 255).astype(np.uint8)).save(png)
    specs = [("necst", 0.1, None, 15.0, "completed"), ("abf", 0.1, None, 14.0, "completed"),
             ("iabf", 0.1, 0.1, 13.5, "completed"), ("iabf", 0.1, 0.01, 13.0, "completed"),
             ("iabf", 0.1, 0.001, 99.0, "early_stopped"), ("necst", 0.2, None, 22.0, "failed")]
    for method, eps, lam, value, reason in specs:
        cfg = Config(dataset="mnist", method=method, eps=eps, lam=lam or 0.01)
        run = client.create_run(exp, run_name=f"{method}-{lam}", tags={
            "mlflow.parentRunId": parent, "trial_id": f"t{len(specs)}{method}{lam}", "stop_reason": reason,
            "config_hash": config_hash(cfg.to_dict())}).info.run_id
        client.log_batch(run, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()],
                         metrics=[Metric("val/distortion", value + 5 - e, 0, e) for e in (1, 2, 3)] +
                                 ([Metric("best/val_distortion", value + 2, 0, 3), Metric("test/distortion", value, 0, 3)]
                                  if reason == "completed" else []))
        if reason == "completed":
            client.log_artifact(run, str(png))
    return uri


def test_fetch_returns_completed_trials_unless_asked(store):
    df = fetch_runs(store, "known")
    assert len(df) == 4 and set(df.stop_reason) == {"completed"}
    row = df[(df.method == "iabf") & (df.lam == 0.01)].iloc[0]
    assert (row.bits, row.eps, row.K, row.seed, row.test, row.val) == (100, 0.1, 5, 0, 13.0, 15.0)
    everything = fetch_runs(store, "known", include_unfinished=True)
    assert sorted(everything.stop_reason) == ["completed"] * 4 + ["early_stopped", "failed"]
    assert df.lam.isna().sum() == 2                                   # lambda only means something for IABF
    with pytest.raises(FetchError, match="no study 'nope'.*known"):
        fetch_runs(store, "nope")


def test_report_writes_tables_reproduction_and_nonempty_figures(store, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main(["--tracking-uri", store, "--study", "known", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "\\begin{tabular}" in printed.out and "\\textbf{13.000}" in printed.out
    for name in ("table1.tex", "table1.md", "table1.csv", "reproduction.md", "reproduction.csv", "report.md",
                 "fig2_val_curves_mnist.png", "fig2_val_curves_mnist.pdf", "fig3_markov_chain_mnist.png",
                 "axis_lam.png", "axis_lam.pdf"):
        assert (out / name).stat().st_size > (1000 if name.endswith(("png", "pdf")) else 100), name
    # lambda 0.01 is chosen among 0.1, 0.01 and 0.001 (stopped early, still a value the search tried): inside
    # the range, where the old rule, reading only the runs that finished, said it was at the edge of [0.01, 0.1]
    assert "lam = 0.01 is at the edge" not in (out / "report.md").read_text()
    assert "no searched hyperparameter's chosen value is at an edge" in (out / "report.md").read_text()
    assert "warning: missing cell: mnist 100-bit necst eps 0.2" not in printed.err  # failed trials: not a column
    csv = pd.read_csv(out / "table1.csv")
    assert csv.set_index("method").loc["iabf", "lam"] == 0.01
    con = pd.read_csv(out / "contrasts.csv").set_index(["arm", "against"])
    assert set(con.index) == {("abf", "necst"), ("iabf", "necst"), ("iabf", "abf")}
    report = (out / "report.md").read_text()
    assert "## Each arm against the baselines" in report and "![fig2_val_curves_mnist](fig2_val_curves_mnist.png)" in report
    assert report_main(["--tracking-uri", store, "--study", "nope", "--out", str(tmp_path / "x")]) == 2


def test_arms_of_one_method_are_rows_of_their_own_and_versions_are_ordered_apart():
    """The fidelity layout: each method by the paper's equations and by the authors' code (`reference`
    arms). Rows per arm; IABF <= ABF <= NECST judged per version; per paper number the closest arm."""
    rows = []
    for arm, tests in (("necst", 14.0), ("abf", 14.2), ("iabf", 14.3), ("necst reference", 14.4),
                       ("abf reference", 13.4), ("iabf reference", 13.2)):
        t = trial(arm.split()[0], 0.1, tests)
        rows.append({**t, "arm": arm, "run_id": arm})
    cells = entries.select_cells(pd.DataFrame(rows))
    assert entries.arms(cells) == ["necst", "necst reference", "abf", "abf reference", "iabf", "iabf reference"]
    tex = layout.to_latex(cells, confirmed=True)
    assert "100-bit IABF reference & \\textbf{13.200}" in tex and "100-bit IABF & 14.300" in tex
    assert "of each arm (nothing searched), trained on every seed reported here" in tex
    order = reproduction.ordering(cells, "test").set_index("version").test_ordered
    assert order.to_dict() == {"paper": False, "reference": True}
    rep = reproduction.reproduction(cells, reproduction.paper_table1())
    closest = rep[rep.closest].set_index("method").arm.to_dict()
    assert closest == {"necst": "necst reference", "abf": "abf reference", "iabf": "iabf reference"}


def test_tables_report_confirmation_runs_only_where_the_study_has_them():
    from analysis.fetch import table_runs

    search = [{**trial("iabf", 0.1, 10.0 + s, lam=lam, seed=9), "phase": "search", "arm": "iabf"}
              for s, lam in enumerate((0.1, 0.01))]
    confirm = [{**trial("iabf", 0.1, 12.0 + s, lam=0.1, seed=s), "phase": "confirm", "arm": "iabf"} for s in range(3)]
    runs, confirmed = table_runs(pd.DataFrame(search + confirm))
    assert confirmed and len(runs) == 3 and set(runs.seed) == {0, 1, 2}
    cells = entries.select_cells(runs, context=pd.DataFrame(search + confirm))
    assert cells.n.tolist() == [3] and cells.config.tolist() == ["lam=0.1"]
    assert "in a search on other seeds, then trained on every seed reported here" in layout.caption(cells, True)
    confirm_only = pd.DataFrame(confirm)
    fixed = entries.select_cells(confirm_only)                 # nothing searched: the caption says so
    assert fixed.config.tolist() == ["(none searched)"]
    assert "(nothing searched)" in layout.caption(fixed, confirmed=True) and "search" not in layout.caption(
        fixed, confirmed=True).replace("nothing searched", "")
    runs, confirmed = table_runs(pd.DataFrame(search))
    assert not confirmed and len(runs) == 2
    assert "search results, no confirmation phase" in layout.caption(entries.select_cells(runs))


def test_each_arm_is_contrasted_with_necst_its_method_and_necst_of_its_version():
    """diff = arm - baseline, Welch's p and CI on known seeds; every baseline an arm has, and only
    those (ABF topk has no ABF by the paper's equations here)."""
    base = {"necst": [15.0, 15.1, 15.2], "iabf": [15.0, 15.2, 15.1], "iabf topk": [14.0, 14.1, 14.2],
            "abf topk": [14.1, 14.2, 14.3],
            "necst reference": [16.0, 16.2, 16.4], "iabf reference": [16.0, 16.2, 16.4]}
    rows = [{**trial(arm.split()[0], 0.1, t, seed=s), "arm": arm, "run_id": f"{arm}{s}"}
            for arm, tests in base.items() for s, t in enumerate(tests)]
    con = significance.contrasts(entries.select_cells(pd.DataFrame(rows))).set_index(["arm", "against"])
    assert sorted(con.index) == sorted([("iabf", "necst"), ("iabf topk", "necst"), ("iabf topk", "iabf"),
                                        ("iabf topk", "abf topk"), ("abf topk", "necst"),
                                        ("necst reference", "necst"), ("iabf reference", "necst"),
                                        ("iabf reference", "iabf"), ("iabf reference", "necst reference")])
    topk = con.loc[("iabf topk", "necst")]
    assert topk["diff"] == pytest.approx(-1.0) and topk.p_value < 1e-3 and topk.low < -1.0 < topk.high < 0
    same = con.loc[("iabf reference", "necst reference")]
    assert same["diff"] == pytest.approx(0.0) and same.p_value == pytest.approx(1.0) and same.low < 0 < same.high
    md = significance.contrasts_markdown(con.reset_index())
    assert "| IABF topk | NECST | -1.000 (" in md and " * | 3 vs 3 |" in md
    # Holm: the smallest p times the number of contrasts, then never below an earlier one, at most 1
    ranked = con.sort_values("p_value")
    assert ranked.p_holm.iloc[0] == pytest.approx(min(1.0, ranked.p_value.iloc[0] * len(con)))
    assert ranked.p_holm.is_monotonic_increasing and (con.p_holm >= con.p_value).all() and con.p_holm.max() <= 1.0


def test_iabf_is_contrasted_with_abf_of_its_version_what_the_infomax_term_adds():
    base = {"necst": [15.0, 15.1, 15.2], "abf": [14.0, 14.1, 14.2], "iabf": [14.0, 14.2, 14.1],
            "abf topk": [13.0, 13.1, 13.2], "iabf topk": [13.5, 13.6, 13.7]}
    rows = [{**trial(arm.split()[0], 0.1, t, seed=s), "arm": arm, "run_id": f"{arm}{s}"}
            for arm, tests in base.items() for s, t in enumerate(tests)]
    con = significance.contrasts(entries.select_cells(pd.DataFrame(rows))).set_index(["arm", "against"])
    assert {("iabf", "abf"), ("iabf topk", "abf topk"), ("abf topk", "abf"), ("iabf topk", "iabf")} <= set(con.index)
    assert ("iabf topk", "abf") not in con.index                     # another version's ABF: not a baseline
    assert con.loc[("iabf", "abf"), "diff"] == pytest.approx(0.0, abs=1e-9)
    assert con.loc[("iabf topk", "abf topk"), "diff"] == pytest.approx(0.5)
    # across cells: one cell here, ABF topk significantly better than NECST, IABF level with ABF
    t = significance.tally(con.reset_index()).set_index(["arm", "against"])
    assert t.loc[("iabf", "abf"), ["better", "worse", "neither"]].tolist() == [0, 0, 1]
    assert t.loc[("abf topk", "necst"), "mean_rel_diff"] == pytest.approx(13.1 / 15.1 - 1)
    md = significance.tally_markdown(t.reset_index())
    assert "| IABF | ABF | 1 | 0 | 0 | 1 | 0 | 0 / 0 | +0.0% | -- | -- |" in md
    assert t.loc[("abf topk", "necst"), ["lower", "better_raw", "worse_raw"]].tolist() == [1, 1, 0]


def test_holm_adjustment_on_known_p_values():
    p = pd.Series([0.01, 0.04, float("nan"), 0.03, 0.2])
    assert significance.holm(p).round(6).tolist()[:2] == [0.04, 0.09] and significance.holm(p).isna().tolist()[2]
    assert significance.holm(p).round(6).tolist()[3:] == [0.09, 0.2]


def planned_store(tmp_path, arms, runs, confirm: bool | None = None):
    """A study whose parent run logged the arms it planned (as studies/tracking.py does) and a budget;
    runs: (arm/method, eps, test) of completed search runs, none with Markov-chain samples."""
    uri = f"sqlite:///{tmp_path / 'planned.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("planned")
    parent = client.create_run(exp, tags={"study": "planned"}).info.run_id
    client.log_batch(parent, params=[*([Param("confirm", str(confirm))] if confirm is not None else []),
                                     Param("arms", str(arms)), Param("fixed.epochs", "3"),
                                     Param("fixed.data_dir", "/home/someone/data"),
                                     Param("by_dataset.mnist.max_train_examples", "500")])
    for method, eps, test in runs:
        cfg = Config(dataset="mnist", method=method, eps=eps)
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial_id": f"{method}{eps}",
                                           "stop_reason": "completed", "phase": "search", "arm": method,
                                           "config_hash": config_hash(cfg.to_dict())}).info.run_id
        client.log_batch(run, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()],
                         metrics=[Metric("best/val_distortion", test, 0, 3), Metric("test/distortion", test, 0, 3)])
    return uri


def test_the_report_warns_only_about_entries_the_study_planned(tmp_path):
    def warned(uri, out) -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert report_main(["--tracking-uri", uri, "--study", "planned", "--out", str(out)]) == 0
        return "\n".join(str(w.message) for w in caught)

    only_iabf = planned_store(tmp_path / "a", ["iabf"], [("iabf", 0.1, 13.0), ("iabf", 0.2, 20.0)])
    said = warned(only_iabf, tmp_path / "r1")
    assert "missing cell" not in said and "Markov" not in said, said
    md = (tmp_path / "r1" / "table1.md").read_text()
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| 100-bit")] == ["| 100-bit IABF"]
    report = (tmp_path / "r1" / "report.md").read_text()
    # the budget is stated, and no machine path (the store's folder, the data folder) is in the report
    assert "`by_dataset.mnist.max_train_examples`: 500" in report and "`fixed.epochs`: 3" in report
    assert str(tmp_path) not in report and "/home/someone" not in report and "sqlite store planned.db" in report

    necst_missing = planned_store(tmp_path / "b", ["necst", "iabf"], [("iabf", 0.1, 13.0)])
    said = warned(necst_missing, tmp_path / "r2")
    assert "missing cell: mnist 100-bit necst eps 0.1" in said and "iabf eps" not in said


def test_analysis_reads_mlflow_without_importing_ray_torch_or_the_study_runner():
    """A report rebuilds on any machine from the tracking store alone: it reads the study's record
    (iabf.record), and imports nothing of studies/, nor Ray, nor torch."""
    code = ("import sys, analysis.best, analysis.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'studies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_a_study_whose_confirmation_has_not_run_is_reported_as_provisional(tmp_path, capsys):
    uri = planned_store(tmp_path, ["iabf"], [("iabf", 0.1, 13.0)], confirm=True)
    with pytest.warns(UserWarning, match="confirmation phase has not run; this table is provisional"):
        assert report_main(["--tracking-uri", uri, "--study", "planned", "--out", str(tmp_path / "r")]) == 0
    assert "PROVISIONAL" in (tmp_path / "r" / "table1.md").read_text()
    assert "**Provisional**" in (tmp_path / "r" / "report.md").read_text()
    done = planned_store(tmp_path / "b", ["iabf"], [("iabf", 0.1, 13.0)], confirm=False)   # confirm: false
    assert report_main(["--tracking-uri", done, "--study", "planned", "--out", str(tmp_path / "r2")]) == 0
    assert "PROVISIONAL" not in (tmp_path / "r2" / "table1.md").read_text()


def report_error(tmp_path, capsys, *args):
    capsys.readouterr()                 # what came before (MLflow creating a test store) is not the report's
    rc = report_main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_the_report_refuses_a_store_or_folder_it_cannot_use_in_one_line_and_creates_nothing(tmp_path, capsys):
    import time

    from procs import free_port

    (tmp_path / "file").write_text("x")
    (tmp_path / "junk.db").write_text("not a database")
    whole = template_store().read_bytes()              # a store cut to half its size, as an interrupted copy leaves it
    (tmp_path / "half.db").write_bytes(whole[:len(whole) // 2])
    cases = [(["--tracking-uri", f"sqlite:///{tmp_path / 'half.db'}"], "half.db is damaged (database disk image is malformed)"),(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"], "no tracking store at"),
             (["--tracking-uri", f"sqlite:///{tmp_path / 'junk.db'}"], "is not an SQLite database"),
             (["--tracking-uri", f"http://127.0.0.1:{free_port()}"], "is unreachable"),
             (["--tracking-uri", "sqlite:///x.db", "--out", str(tmp_path / "file" / "report")], "is a file, not a folder")]
    for args, needle in cases:
        started = time.time()
        rc, err = report_error(tmp_path, capsys, "--study", "s", "--out", str(tmp_path / "out"), *args)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (args, err)
        assert time.time() - started < 15                    # seconds, not MLflow's minutes of retries
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "out").exists()


def test_a_study_with_no_completed_trial_exits_non_zero_and_writes_nothing(tmp_path, capsys):
    uri = planned_store(tmp_path, ["iabf"], [])
    rc, err = report_error(tmp_path, capsys, "--tracking-uri", uri, "--study", "planned", "--out", str(tmp_path / "r"))
    assert rc == 1 and err == ["error: study 'planned' has no completed trial yet: nothing to tabulate"]
    assert not (tmp_path / "r").exists()


@given(st.lists(st.floats(-50, 50), min_size=2, max_size=8), st.lists(st.floats(-50, 50), min_size=2, max_size=8))
def test_welch_from_summary_statistics_is_welch_from_the_samples(a, b):
    if np.std(a) < 1e-3 or np.std(b) < 1e-3:
        return                                        # a constant sample: no t-test either way
    low, high, p = significance.welch(np.mean(a), np.std(a, ddof=1), len(a), np.mean(b), np.std(b, ddof=1), len(b))
    t = stats.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(t.pvalue, rel=1e-6, abs=1e-9)
    assert (low, high) == pytest.approx(tuple(t.confidence_interval(0.95)), rel=1e-6, abs=1e-9)


def test_a_committed_table_is_set_beside_the_study_per_cell(store, tmp_path, capsys):
    other = tmp_path / "other" / "table1.csv"
    other.parent.mkdir()
    pd.DataFrame([{"dataset": "mnist", "bits": 100, "eps": 0.1, "arm": "separation ldpc", "method": "separation",
                   "test": 20.0, "std": 0.5, "n": 3},
                  {"dataset": "mnist", "bits": 100, "eps": 0.3, "arm": "separation ldpc", "method": "separation",
                   "test": 40.0, "std": 0.5, "n": 3}]).to_csv(other, index=False)
    out = tmp_path / "report"
    assert report_main(["--tracking-uri", store, "--study", "known", "--out", str(out), "--against", str(other)]) == 0
    con = pd.read_csv(out / "against.csv").set_index("against")
    assert set(con.index) == {"necst", "abf", "iabf"} and (con.arm == "separation ldpc").all()
    assert con.loc["necst", "diff"] == pytest.approx(20.0 - 15.0) and (con.eps == 0.1).all()   # the shared cell only
    assert (out / "against_eps_mnist.png").stat().st_size > 1000
    assert "## Against" in (out / "report.md").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    rc, err = report_error(tmp_path, capsys, "--tracking-uri", store, "--study", "known", "--out",
                           str(tmp_path / "never"), "--against", str(bad))
    assert rc == 2 and len(err) == 1 and "no column(s) dataset" in err[0] and not (tmp_path / "never").exists()
    assert entries.arm_label("separation bound") == "Separation bound (optimistic)"


def test_an_ablation_axis_is_contrasted_against_its_default_with_every_other_axis_equal():
    """A cell axis beyond Table 1's (precision): each arm at bf16 against the same arm at fp32 (the
    Config default) in the same dataset and eps; never across datasets or arms."""
    tests = {("mnist", "necst", "fp32"): [29.0, 29.2, 29.4], ("mnist", "necst", "bf16"): [29.5, 29.7, 29.9],
             ("mnist", "iabf", "fp32"): [28.0, 28.1, 28.2], ("mnist", "iabf", "bf16"): [28.0, 28.2, 28.1],
             ("binary_mnist", "necst", "bf16"): [0.18, 0.19, 0.2]}   # no fp32 here: nothing to contrast
    rows = []
    for (dataset, method, precision), values in tests.items():
        cfg = Config(dataset=dataset, method=method, precision=precision)
        rows += [{**trial(method, 0.1, t, seed=s, dataset=dataset), "arm": method, "run_id": f"{dataset}{method}{precision}{s}",
                  "config_hash": config_hash(cfg.to_dict()), "cell.dataset": dataset, "cell.bits": cfg.bits,
                  "cell.eps": 0.1, "cell.precision": precision} for s, t in enumerate(values)]
    cells = entries.select_cells(pd.DataFrame(rows))
    assert significance.contrasted_axes(cells) == ["cell.precision"]
    con = significance.axis_contrasts(cells, "cell.precision").set_index("arm")
    assert sorted(con.index) == ["iabf", "necst"] and set(con.baseline) == {"fp32"} and set(con.precision) == {"bf16"}
    assert con.loc["necst", "diff"] == pytest.approx(0.5) and con.loc["necst", "low"] > 0
    assert con.loc["iabf", "diff"] == pytest.approx(0.0, abs=1e-9) and con.loc["iabf", "low"] < 0 < con.loc["iabf", "high"]
    assert (con.p_holm >= con.p_value).all()
    md = significance.axis_contrasts_markdown(con.reset_index(), "precision")
    assert "| NECST | bf16 | fp32 | 29.7 | 29.2 | +0.5 (" in md


def test_a_table_says_the_cell_values_no_heading_shows():
    """An ablation of K x flip budget at one eps and on the BEC: blocks say K, columns flip_budget,
    so the caption says eps 0.1 (the block names say the BEC); Table 1's layout (eps in the columns)
    adds nothing to its caption."""
    rows = [{**trial(m, 0.1, 10.0 + k + b + s, seed=s), "arm": m, "run_id": f"{m}{k}{b}{s}",
             "cell.dataset": "mnist", "cell.bits": 100, "cell.eps": 0.1, "cell.channel": "bec", "cell.K": k,
             "cell.flip_budget": b} for m in ("necst", "abf", "iabf") for k in (1, 2) for b in (0.05, 0.1) for s in (0, 1)]
    cells = entries.select_cells(pd.DataFrame(rows))
    assert layout.layout(cells)[1] == "cell.flip_budget"
    tex, md = layout.to_latex(cells, confirmed=True), layout.to_markdown(cells, confirmed=True)
    assert "Every entry at $\\epsilon = 0.1$. " in tex and "MNIST, channel=bec, K=1 & flip\\_budget=0.05" in tex
    assert "Every entry at eps = 0.1. " in md
    paper = entries.select_cells(pd.DataFrame([trial("necst", e, 14.0) for e in (0.1, 0.2)]))
    assert "Every entry" not in layout.to_latex(paper) and "Every entry" not in layout.to_markdown(paper)
    # eps fixed by the study, not a cell axis (a precision study): its entries still say where
    fixed = [{**trial(m, 0.1, 20.0 + s, seed=s), "arm": m, "run_id": f"{m}{p}{s}", "cell.dataset": "mnist",
              "cell.bits": 100, "cell.precision": p} for m in ("necst", "abf", "iabf") for p in ("fp32", "bf16") for s in (0, 1)]
    assert "Every entry at $\\epsilon = 0.1$. " in layout.to_latex(entries.select_cells(pd.DataFrame(fixed)))
    # a column of test noise says so: it is not the training noise the paper's columns are
    robust = [{**trial(m, 0.1, 20.0 + t + s, seed=s), "arm": m, "run_id": f"{m}{t}{s}", "cell.dataset": "mnist",
               "cell.bits": 100, "cell.eps": 0.1, "cell.test_eps": t} for m in ("necst", "abf", "iabf")
              for t in (0.1, 0.3) for s in (0, 1)]
    robust = entries.select_cells(pd.DataFrame(robust))
    assert layout.layout(robust)[1] == "cell.test_eps"
    assert "test $\\epsilon=0.3$" in layout.to_latex(robust) and "| test eps 0.3 |" in layout.to_markdown(robust)
    assert "Every entry at eps = 0.1. " in layout.to_markdown(robust)


def test_an_axis_an_arm_does_not_use_gets_no_contrast_and_a_repeated_one_counts_once():
    """K x flip budget at eps 0.1: NECST has no adversary, so its entries are the same numbers at every
    budget. Across the budget it gets no contrast (it is named as not using it); across K its one
    contrast, the same in every budget's block, is one row that Holm counts once. The budget's
    baseline is the paper's, eps (Config's -1), not the smallest budget."""
    necst = {1: [31.0, 31.5, 32.0], 5: [25.0, 25.2, 24.9]}
    abf = {(1, 0.05): [32.0, 32.4, 33.0], (1, 0.1): [33.0, 34.0, 35.5], (5, 0.05): [25.0, 25.3, 24.8],
           (5, 0.1): [25.1, 25.4, 25.6]}
    rows = [{**trial(m, 0.1, t, seed=s), "arm": m, "run_id": f"{m}{k}{b}{s}", "cell.dataset": "mnist",
             "cell.bits": 100, "cell.eps": 0.1, "cell.K": k, "cell.flip_budget": b}
            for (m, k, b), values in [*(((("necst", k, b), necst[k]) for k in (1, 5) for b in (0.05, 0.1))),
                                      *((("abf", k, b), v) for (k, b), v in abf.items())]
            for s, t in enumerate(values)]
    cells = entries.select_cells(pd.DataFrame(rows))
    budget = significance.axis_contrasts(cells, "cell.flip_budget")
    assert set(budget.arm) == {"abf"} and budget.attrs["inert"] == ["necst"] and set(budget.baseline) == {"0.1"}
    assert "NECST: the same numbers, seed for seed, at every flip_budget" in significance.inert_text(budget, "flip_budget")
    k = significance.axis_contrasts(cells, "cell.K")
    assert len(k) == 3 and not k.attrs["inert"]                           # NECST once, ABF at each budget
    once = k[k.arm == "necst"].iloc[0]
    assert once["cell.flip_budget"] == "0.05, 0.1" and once["diff"] == pytest.approx(np.mean(necst[1]) - np.mean(necst[5]))
    assert list(k.p_holm) == pytest.approx(list(significance.holm(k.p_value)))     # a family of 3, not 4
    assert "| 0.05, 0.1 | NECST | 1 | 5 |" in significance.axis_contrasts_markdown(k, "K")


def test_the_table_chooses_a_configuration_by_the_rule_the_study_chose_by():
    """A `confirm: false` study whose metric is the mutual information (mode max): the table's entry is the
    configuration the study's own rule (iabf.record.choose) picks, not the one of lowest validation distortion
    (what the table used to take, whatever the study said)."""
    rows = []
    for lam, val, mi in ((0.1, 9.0, 0.20), (0.01, 11.0, 0.35)):       # lam 0.1: lower distortion, less information
        for seed in (0, 1):
            rows.append({**trial("iabf", 0.1, val + seed, val=val + seed, seed=seed, lam=lam), "arm": "iabf",
                         "epochs": 5.0, f"metric.{M.VAL_MI}": mi + 0.01 * seed})
    runs = pd.DataFrame(rows)
    by_distortion = entries.select_cells(runs)
    by_information = entries.select_cells(runs, metric=M.VAL_MI, mode="max")
    assert by_distortion.config.tolist() == ["lam=0.1"] and by_information.config.tolist() == ["lam=0.01"]
    per_config = [{"uid": lam, "epoch": 5.0, "score": g[f"metric.{M.VAL_MI}"].mean()} for lam, g in runs.groupby("lam")]
    assert R.choose(per_config, "max")["uid"] == 0.01                   # the study's rule, on the same runs
    with pytest.raises(entries.TableError, match="no 'val/marginal_entropy' metric"):
        entries.select_cells(runs, metric=M.VAL_ENTROPY, mode="max")


def test_an_edge_note_judges_a_continuous_search_by_its_declared_range():
    """Three draws of loguniform [0.001, 0.3]: the chosen 0.0018 is the smallest drawn but well inside what
    was declared (no note; the old rule flagged it against [0.0018, 0.011]); a chosen 0.0011, in the outer
    tenth of the declared range on the log scale, is noted. A grid is judged by its declared values: the
    chosen value at either end is noted whatever the other values' runs reached (ASHA may have stopped them)."""
    params = {"search.lam": "{'loguniform': [0.001, 0.3]}", "search.K": "{'grid': [2, 5, 10]}"}
    declared = R.declared_search(params, "lam")
    assert declared == ("loguniform", [0.001, 0.3]) and R.declared_search(params, "eps") is None
    assert figures.edge_note(0.0018, pd.Series([0.0018, 0.005, 0.011]), "lam", declared) is None
    note = figures.edge_note(0.0011, pd.Series([0.0011, 0.005, 0.011]), "lam", declared)
    assert note and "near the edge of the declared range [0.001, 0.3] (loguniform)" in note
    assert figures.edge_note(0.0018, pd.Series([0.0018, 0.005, 0.011]), "lam") is not None   # nothing declared: as drawn
    assert "chosen K = 10 is at the edge of the searched range [2, 10]" in figures.edge_note(
        10, pd.Series([2, 5, 10]), "K", R.declared_search(params, "K"))
    assert figures.edge_note(5, pd.Series([5, 2, 10]), "K", R.declared_search(params, "K")) is None
    assert figures.edge_note(10, pd.Series([10]), "K", R.declared_search(params, "K")) is not None   # the rest stopped


def test_an_arms_own_search_is_on_the_record_for_the_edge_note_and_for_resume():
    """lambda searched by the IABF arm only (variants[].search, how the shipped studies search it): the parent
    run records it under the arm's place, the edge note reads the arm's declared range, and a --resume whose
    file changed that search sees the change."""
    from studies.tracking import study_params
    from studies.validation import validate

    raw = {"study": "s", "dataset": "digits", "searcher": "optuna", "num_samples": 3,
           "variants": [{"method": "necst"}, {"method": "iabf", "search": {"lam": {"loguniform": [0.001, 0.3]}}}]}
    params = study_params(validate(raw, "s.yaml"))
    assert params["variant.1.search.lam"] == "{'loguniform': [0.001, 0.3]}" and params["variant.1.method"] == "iabf"
    assert R.declared_search(params, "lam", "iabf") == ("loguniform", [0.001, 0.3])
    assert R.declared_search(params, "lam", "necst") is None and R.declared_search(params, "lam") is None
    assert figures.edge_note(0.0018, pd.Series([0.0018, 0.005, 0.011]), "lam", R.declared_search(params, "lam", "iabf")) is None
    raw["variants"][1]["search"]["lam"] = {"loguniform": [0.001, 0.1]}
    edited = study_params(validate(raw, "s.yaml"))
    assert {k for k in params if params[k] != edited.get(k)} == {"variant.1.search.lam"}


def test_the_edge_note_and_axis_plot_follow_the_studys_metric_and_mode_and_see_the_runs_asha_stopped(tmp_path):
    """A study on val/mutual_info, mode max, lambda on the grid [0.001, 0.01, 0.1]: ASHA stopped 0.01 and 0.001
    at their first rung (where their mutual information was lower), 0.1 ran to its end and is chosen, the
    highest value of the grid. The report says so (the old rule, reading only finished runs and the lowest
    validation distortion, judged nothing: one value left) and draws axis_lam with all three runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mi")
    parent = client.create_run(exp, tags={"study": "mi"}).info.run_id
    client.log_batch(parent, params=[Param("metric", M.VAL_MI), Param("mode", "max"), Param("confirm", "False"),
                                     Param("search.lam", "{'grid': [0.001, 0.01, 0.1]}")])
    for lam, mi, reason, epochs in ((0.1, 40.0, "completed", 3), (0.01, 30.0, "early_stopped", 1),
                                    (0.001, 20.0, "early_stopped", 1)):
        cfg = Config(dataset="mnist", method="iabf", eps=0.1, lam=lam)
        run = client.create_run(exp, run_name=f"iabf-{lam}", tags={
            "mlflow.parentRunId": parent, "trial_id": f"t{lam}", "stop_reason": reason,
            "config_hash": config_hash(cfg.to_dict())}).info.run_id
        # the distortion says the opposite (lowest at 0.001): a study on mutual information must not read it
        client.log_batch(run, params=[Param(k, str(v)) for k, v in cfg.to_dict().items()],
                         metrics=[Metric(M.VAL_MI, mi + e, 0, e) for e in range(1, epochs + 1)] +
                                 [Metric(M.VAL_DISTORTION, 10 * lam, 0, epochs), Metric(M.BEST_VAL_DISTORTION, 10 * lam, 0, epochs)] +
                                 ([Metric(M.TEST_DISTORTION, 1.0, 0, epochs)] if reason == "completed" else []))
    out = tmp_path / "report"
    assert report_main(["--tracking-uri", uri, "--study", "mi", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "iabf: chosen lam = 0.1 is at the edge of the searched range [0.001, 0.1]" in report, report
    assert (out / "axis_lam.png").stat().st_size > 1000
    assert "chosen by val/mutual_info (highest) on the same runs" in (out / "table1.md").read_text()
    assert "the configuration chosen by val/mutual_info (highest)" in (out / "reproduction.md").read_text()
