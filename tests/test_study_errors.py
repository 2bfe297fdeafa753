"""studies/ablation.py on bad input: one line naming the problem, a non-zero exit, no traceback,
and nothing half-written (no MLflow store or runs, no results folder). In-process: no Ray starts."""
import pytest
import yaml

from studies.ablation import main


def run(tmp_path, monkeypatch, capsys, *args):
    monkeypatch.chdir(tmp_path)
    uri = [] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    rc = main(["--storage", str(tmp_path / "results"), *uri, *args])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def space(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
    return str(p)


CASES = [
    ("malformed yaml", lambda t: ["--space", space(t, "study: [x\n")], "not valid YAML"),
    ("unknown key", lambda t: ["--space", space(t, {"study": "s", "searchh": {}})], "searchh: unknown key"),
    ("nested unknown key", lambda t: ["--space", space(t, {"study": "s", "scheduler": {"name": "asha", "rf": 2}})],
     "scheduler.rf: unknown key"),
    ("wrong type", lambda t: ["--space", space(t, {"study": "s", "num_samples": "ten"})], "num_samples: expected an integer"),
    ("out of range", lambda t: ["--space", space(t, {"study": "s", "fixed": {"eps": 0.9}})], "eps=0.9 is not allowed"),
    ("empty grid", lambda t: ["--space", space(t, {"study": "s", "search": {"K": {"grid": []}}})], "non-empty list"),
    ("unknown dataset", lambda t: ["--space", space(t, {"study": "s", "dataset": "imagenet"})], "dataset='imagenet'"),
    ("unknown method", lambda t: ["--space", space(t, {"study": "s", "fixed": {"method": "vq"}})], "method='vq'"),
    ("missing space file", lambda t: ["--space", str(t / "none.yaml")], "no such search-space file"),
    ("missing data offline", lambda t: ["--space", space(t, {"study": "s", "dataset": "mnist"}), "--data-dir", str(t / "d")],
     "python -m iabf.data prepare mnist"),
    ("unsupported tracking scheme", lambda t: ["--smoke", "--tracking-uri", "ftp://x/y"], "unsupported scheme 'ftp'"),
    ("unreachable address", lambda t: ["--smoke", "--address", "127.0.0.1:9"], "cannot reach the Ray cluster at '127.0.0.1:9'"),
    ("nothing to resume", lambda t: ["--smoke", "--resume"], "no earlier run of study 'quick-smoke' to resume"),
]


@pytest.mark.parametrize("name, args, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, monkeypatch, capsys, name, args, needle):
    rc, err = run(tmp_path, monkeypatch, capsys, *args(tmp_path))
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
