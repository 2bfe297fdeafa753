"""analysis/report.py and analysis/fetch.py on a real MLflow store filled through the client with known values:
the files, the refusals, the notes on the search."""
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from runner import template_store
from frames import planned_store, report_error, store, trial  # noqa: F401  (store: a fixture)
from analysis import entries, figures, layout
from analysis.fetch import FetchError, fetch_runs
from analysis.report import main as report_main
from iabf import metrics as M
from iabf import record as R
from iabf.config import Config
from studies.tracking import config_hash

ROOT = Path(__file__).resolve().parents[1]


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
