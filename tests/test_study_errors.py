"""studies/ablation.py on bad input: one line naming the problem, a non-zero exit, no traceback,
and nothing half-written (no MLflow store or runs, no results folder). In-process: no Ray starts."""
import pytest
import yaml

from runner import template_store
from studies.ablation import main


def run(tmp_path, monkeypatch, capsys, *args):
    monkeypatch.chdir(tmp_path)
    uri = [] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    rc = main(["--storage", str(tmp_path / "results"), *uri, *args])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def bad_npz(t, name, data: bytes):
    (t / "d").mkdir(exist_ok=True)
    (t / "d" / f"{name}.npz").write_bytes(data)
    return t / "d"


def small_npz(t, name, shape):
    import numpy as np

    (t / "d").mkdir(exist_ok=True)
    x = np.zeros(shape, np.uint8)
    np.savez(t / "d" / f"{name}.npz", x_train=x, y_train=np.zeros(len(x), np.uint8), x_test=x[:2],
             y_test=np.zeros(2, np.uint8))
    return t / "d"


def touch(path, data=b"x"):
    path.write_bytes(data)
    return path


def half_store(t):
    whole = template_store().read_bytes()
    return touch(t / "half.db", whole[:len(whole) // 2])


def mkdir(path):
    path.mkdir()
    return path


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
    ("unknown dataset", lambda t: ["--space", space(t, {"study": "s", "dataset": "imagenet"})],
     "dataset 'imagenet': no file"),
    ("not a dataset name", lambda t: ["--space", space(t, {"study": "s", "dataset": "a b"})], "dataset='a b'"),
    ("unknown method", lambda t: ["--space", space(t, {"study": "s", "fixed": {"method": "vq"}})], "method='vq'"),
    ("missing space file", lambda t: ["--space", str(t / "none.yaml")], "no such search-space file"),
    ("missing data offline", lambda t: ["--space", space(t, {"study": "s", "dataset": "mnist"}), "--data-dir", str(t / "d")],
     "python -m iabf.data prepare mnist"),
    ("truncated dataset file", lambda t: ["--space", space(t, {"study": "s", "dataset": "mnist"}), "--data-dir",
                                          str(bad_npz(t, "mnist", b"PK\x03\x04 truncated"))], "not a readable .npz"),
    ("dataset file of the wrong shape", lambda t: ["--space", space(t, {"study": "s", "dataset": "mnist"}), "--data-dir",
                                                   str(small_npz(t, "mnist", (10_001, 32, 32)))], "mnist expects (28, 28)"),
    ("too few images for the validation split", lambda t: ["--space", space(t, {"study": "s", "dataset": "mnist"}),
                                                           "--data-dir", str(small_npz(t, "mnist", (500, 28, 28)))],
     "at least 10,001 are needed"),
    ("unsupported tracking scheme", lambda t: ["--smoke", "--tracking-uri", "ftp://x/y"], "unsupported scheme 'ftp'"),
    ("sqlite store under a regular file", lambda t: ["--smoke", "--tracking-uri", f"sqlite:///{touch(t / 'f')}/mlflow.db"],
     "cannot make its folder"),
    ("sqlite file that is no database", lambda t: ["--smoke", "--tracking-uri", f"sqlite:///{touch(t / 'x.db', b'hello')}"],
     "is not an SQLite database"),
    ("sqlite store cut to half its size", lambda t: ["--smoke", "--tracking-uri", f"sqlite:///{half_store(t)}"],
     "half.db is damaged (database disk image is malformed)"),
    ("sqlite store that is a folder", lambda t: ["--smoke", "--tracking-uri", f"sqlite:///{mkdir(t / 'd.db')}"],
     "is a folder, not a database file"),
    ("file store, read-only in MLflow 3", lambda t: ["--smoke", "--tracking-uri", f"file://{t / 'mlruns'}"],
     "no longer writes a file store"),
    ("storage under a regular file", lambda t: ["--smoke", "--storage", str(touch(t / "r") / "results")],
     "is a file, not a folder"),
    ("unreachable address", lambda t: ["--smoke", "--address", "127.0.0.1:9"], "cannot reach the Ray cluster at '127.0.0.1:9'"),
    ("nothing to resume", lambda t: ["--smoke", "--resume"], "no earlier run of study 'quick-smoke' to resume"),
]


@pytest.mark.parametrize("name, args, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, monkeypatch, capsys, name, args, needle):
    rc, err = run(tmp_path, monkeypatch, capsys, *args(tmp_path))
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_studies_started_at_once_on_a_new_store_create_its_schema_once(tmp_path):
    """Three processes open one new sqlite store in the same instant, as two studies started together
    do: with the store created under its lock, every one of them can then write to it."""
    import subprocess
    import sys
    import time

    code = ("import sys, time\n"
            "from studies import store\n"
            "from mlflow.tracking import MlflowClient\n"
            "while time.time() < float(sys.argv[2]): time.sleep(0.001)\n"
            "store.create_store(sys.argv[1])\n"
            "MlflowClient(sys.argv[1]).create_experiment(sys.argv[3])\n")
    uri, start = f"sqlite:///{tmp_path / 'new.db'}", time.time() + 6   # every process imported and waiting
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(start), f"e{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-800:] for o in outs)
    from mlflow.tracking import MlflowClient
    assert {e.name for e in MlflowClient(uri).search_experiments()} >= {"e0", "e1", "e2"}


@pytest.mark.parametrize("errno_name", ["ENOSYS", "EOPNOTSUPP", "ENOLCK"])
def test_a_folder_on_a_filesystem_without_flock_is_one_line_and_nothing_stays(tmp_path, monkeypatch, errno_name):
    """Lustre mounted without -o flock answers flock with ENOSYS (NFS without its lock daemon: ENOLCK): the
    study's lock cannot keep two drivers apart, which is said, naming the folder and the fix; the new study's
    folder does not stay. (Such a filesystem cannot be mounted here: flock is made to fail as it fails there.)"""
    import errno
    import fcntl

    from studies import lock
    from studies.ablation import Refused, hold

    def no_flock(f, how):
        raise OSError(getattr(errno, errno_name), "")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "results" / "s-20260101-000000"
    with pytest.raises(Refused) as refused:
        hold(folder)
    assert refused.value.code == 2 and not folder.exists()
    said = str(refused.value)
    assert said.startswith(f"the filesystem of {folder} does not lock files (flock: ") and "-o flock" in said, said
    with pytest.raises(lock.NoLock):   # and the --resume path, which holds the lock before anything starts
        lock.hold(folder)
