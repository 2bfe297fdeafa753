"""Markov-chain sampling (eq. 32) and image grids."""
import torch
from PIL import Image

from iabf.models import build
from iabf.sampling import main, markov_chain, reconstructions, save_grid
from iabf.train import save_checkpoint, run
from iabf.config import Config


def test_markov_chain_shapes_range_and_reproducibility():
    enc, dec, _ = build("digits", (1, 8, 8), 16)
    x0 = torch.rand(5, 1, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)
    a = markov_chain(enc, dec, x0, 0.1, steps=30, every=10, gen=g())
    b = markov_chain(enc, dec, x0, 0.1, steps=30, every=10, gen=g())
    assert a.shape == (4, 5, 1, 8, 8) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and torch.equal(a[0], x0)
    assert reconstructions(enc, dec, x0, 0.1, gen=g()).shape == (2, 5, 1, 8, 8)


def test_sampling_cli_writes_a_grid_from_a_checkpoint(tmp_path):
    _, [state] = run(Config(dataset="digits", method="necst", epochs=1))
    ckpt = save_checkpoint(state, tmp_path / "best.pt")
    out = tmp_path / "chain.png"
    assert main([str(ckpt), "--steps", "20", "--every", "5", "--n", "6", "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert (w, h) == (6 * 9 + 1, 5 * 9 + 1)      # 6 chains x 5 rows of 8x8 with 1px padding


def test_sampling_cli_on_a_corrupted_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"\x80\x02 truncated")
    assert main([str(bad), "--out", str(tmp_path / "chain.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {bad} is unreadable")
    assert not (tmp_path / "chain.png").exists()
