"""What a user sees in MLflow's UI: the link a study prints opens on the study's runs. A real
`mlflow server` on loopback and a real headless browser (Debian's chromium-headless-shell, which
.ci/run installs); skipped where no such browser is installed."""
import re
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from procs import free_port, start_server, stop_server
from studies import tracking
from studies.validation import validate

BROWSER = shutil.which("chromium-headless-shell")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs chromium-headless-shell (apt-get install chromium-headless-shell)")


def rendered(url: str, profile) -> str:
    """The page's text after its scripts ran (up to 20 s of virtual time): the DOM without its
    styles, scripts, drawings and tags."""
    out = subprocess.run([BROWSER, "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={profile}", "--window-size=1500,900", "--virtual-time-budget=20000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = re.sub(r"<style.*?</style>|<script.*?</script>|<svg.*?</svg>", " ", out.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_the_link_a_study_prints_opens_mlflows_ui_on_the_studys_runs(tmp_path):
    port = free_port()
    server = start_server(tmp_path, port)
    try:
        uri = f"http://127.0.0.1:{port}"
        study = validate({"study": "ui-check", "dataset": "digits"}, "space.yaml")
        exp_id, parent = tracking.start_study(uri, study, str(tmp_path / "results" / "ui-check-1"), resume=False)
        client = MlflowClient(uri)
        client.set_terminated(parent)
        assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND] == tracking.MODEL_TRAINING
        page = rendered(tracking.ui_link(uri, exp_id), tmp_path / "profile")
        # the runs table, with the study's parent run in it
        assert "ui-check-1" in page and " Runs " in page and "1 matching run" in page, page[-3000:]
        # without the link's view, MLflow 3.17 opens its GenAI overview, where the runs are not listed
        plain = rendered(f"{uri}/#/experiments/{exp_id}", tmp_path / "profile2")
        assert "ui-check-1" not in plain
    finally:
        stop_server(server)
