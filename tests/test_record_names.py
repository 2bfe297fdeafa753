"""The record (iabf/record.py) is the one place a study's MLflow names are declared: a tag, a parent-run
parameter the analysis reads back, or a frame's column prefix typed as a string anywhere else in the code
that writes or reads the record is a second declaration waiting to disagree."""
import ast
from pathlib import Path

from iabf import record as R

ROOT = Path(__file__).resolve().parents[1]
# names that mean one thing only: the record's (seed, study, cell, arm and uid are also Config fields, columns,
# or the keys of record.choose's entries, and are not scanned for)
NAMES = {R.TRIAL_ID, R.CONFIG_HASH, R.GIT_COMMIT, R.NODE_IDS, R.PHASE, R.CONFIRMS, R.STOP_REASON, R.FAILURE,
         R.INTERRUPTION, R.STATE_RESET, R.REPLAYED, R.STORAGE_FULL, R.STORAGE_UNREACHED, R.PLAN_ARTIFACT}
PREFIXES = (R.PARAM, R.METRIC_OF)
CODE = [*sorted((ROOT / "studies").glob("*.py")), *sorted((ROOT / "analysis").glob("*.py")), ROOT / "iabf" / "tune.py"]


def literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_name_of_the_record_is_typed_outside_it():
    typed = [f"{path.relative_to(ROOT)}:{line}: {value!r}" for path in CODE for line, value in literals(path)
             if value in NAMES or value.startswith(PREFIXES)]
    assert not typed, "use iabf.record's name:\n" + "\n".join(typed)


def test_the_scan_sees_a_name_typed_as_a_literal(tmp_path):
    """The check itself: a tag typed as a string, or a column built from a typed prefix, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text('tags = {"trial_id": 1}\ncolumn = f"metric.{name}"\n')
    assert [v for _, v in literals(bad) if v in NAMES or v.startswith(PREFIXES)] == ["trial_id", "metric."]


def test_a_run_from_a_changed_working_tree_says_so_in_its_commit(tmp_path):
    """git_commit names the commit, with +dirty where a tracked file differed from it when the study began."""
    import subprocess

    from studies import tracking

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "f.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "f.py").write_text("a = 22\n")
    assert tracking.git_commit(tmp_path) == head                # read once per study: the code it began with
    tracking.git_commit.cache_clear()
    assert tracking.git_commit(tmp_path) == head + "+dirty"
    tracking.git_commit.cache_clear()
