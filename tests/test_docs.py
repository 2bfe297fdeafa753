"""The README and docs/ stay true: every link resolves, the Findings table lists every finding's page,
and the recipe for a channel (docs/extending.md) is followed here step by step, exactly as written,
and the channel it adds trains, validates, plans and codes."""
import dataclasses
import importlib
import math
import re
from pathlib import Path

import pytest
import torch

from iabf import capacity, channels, config
from iabf import metrics as M
from iabf.config import Config, config_parser
from iabf.train import run

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "findings").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchor of each heading: lower case, punctuation but - and _ dropped, spaces as -."""
    heads = [l.lstrip("#").strip() for l in path.read_text().splitlines() if l.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_link_of_the_readme_and_docs_resolves(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
        if anchor:
            assert anchor in anchors(path), f"{page.relative_to(ROOT)}: no heading #{anchor} in {file or page.name}"


def test_the_findings_table_links_every_finding_and_each_its_report():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Findings"):].split("\n## ")[0]
    linked = set(re.findall(r"\]\((docs/findings/[\w.]+\.md)\)", table))
    pages = {f"docs/findings/{p.name}" for p in (ROOT / "docs" / "findings").glob("*.md")}
    assert linked == pages and len(pages) >= 6
    for page in pages:   # a finding cites the committed report its numbers come from
        assert re.search(r"\]\(\.\./[\w]+/report\.md\)", (ROOT / page).read_text()), page


# --- the recipe for a channel, followed as written -----------------------------------------------

RECIPE = (ROOT / "docs" / "extending.md").read_text().split("## A channel")[1].split("\n## ")[0]


def steps() -> list[str]:
    return re.findall(r"^\d\. (.+?)(?=^\d\. |\Z)", RECIPE, flags=re.M | re.S)


def test_the_recipe_names_only_code_that_exists():
    assert len(steps()) == 4
    named = re.findall(r"`(iabf\.\w+\.\w+)`", RECIPE)
    assert {"iabf.channels.CHANNELS", "iabf.config.CHANNELS", "iabf.capacity.CAPACITY"} <= set(named)
    for name in named:
        module, attr = name.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), attr), name
    fields = re.search(r"`Channel\(([\w, ]+)\)`", steps()[0]).group(1).split(", ")
    assert fields == [f.name for f in dataclasses.fields(channels.Channel)]   # the row's fields, in order
    assert "tests/test_channels.py" in steps()[3]


# A channel the project does not have: the reverse Z-channel, where a 0 becomes 1 with probability eps.
def compose_s(p, eps):
    return (p + (1 - p) * eps).clamp(channels.CLIP, 1 - channels.CLIP)


def corrupt_s(y, eps, gen=None):
    rises = torch.rand(y.shape, generator=gen, device=y.device) < eps
    return torch.where(rises, torch.ones_like(y), y)


def zeros_mask(y, grad):   # eq. 25 on this channel: only a 0 may be attacked, where rising to 1 raises the loss
    return ((y < 0.5) & (grad > 0)).to(y.dtype)


def llr_s(r, eps):   # a 0 arrives only if a 0 was sent; a 1 is a sent 1, or a sent 0 that rose
    sure = torch.full_like(r, -channels.LLR_MAX)
    return torch.where(r > 0.5, torch.full_like(r, min(channels.LLR_MAX, -math.log(eps)) if eps > 0 else channels.LLR_MAX), sure)


@pytest.fixture
def added(monkeypatch):
    """Steps 1-3 of the recipe, as a contributor's edits would make them (step 4 is this file's tests)."""
    monkeypatch.setitem(channels.CHANNELS, "s", channels.Channel(compose_s, corrupt_s, zeros_mask, llr_s))
    monkeypatch.setitem(config.CHANNELS, "s", "reverse Z-channel: every 0 becomes 1 with probability eps")
    monkeypatch.setitem(capacity.CAPACITY, "s", capacity.CAPACITY["z"])   # the Z-channel mirrored
    return "s"


def test_a_channel_added_by_the_recipe_is_validated_documented_and_in_the_schema(added):
    from studies.schema import schema
    from studies.validation import validate

    assert Config(channel=added).channel == added
    helptext = config_parser("x", "x").format_help()
    assert "reverse Z-channel" in helptext and "{bsc,bec,z,s}" in helptext
    assert schema()["$defs"]["values"]["properties"]["channel"]["enum"] == ["bsc", "bec", "z", "s"]
    study = validate({"study": "s", "dataset": "digits", "search": {"channel": {"grid": ["bsc", added]}}}, "s.yaml")
    assert study.n_trials() == 2   # a cell per channel


def test_a_channel_added_by_the_recipe_trains_with_the_adversary_and_in_the_separation_baseline(added):
    history = []
    final, _ = run(Config(dataset="digits", method="iabf", channel=added, eps=0.2, epochs=1, K=2),
                   lambda m, _: history.append(m))
    assert math.isfinite(final[M.TEST_DISTORTION]) and len(history) == 1
    # what crossed it: no 1 ever became a 0, and about eps of the 0s rose
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(200, 100, generator=gen) < 0.5).float()
    y_sent, received = channels.transmit(y, 0.2, added, gen)
    assert not ((y_sent == 1) & (received == 0)).any()
    assert abs(((y_sent == 0) & (received == 1)).sum() / (y_sent == 0).sum() - 0.2) < 0.03
    # the separation baseline: its k from the capacity entry, its BP from the llr
    cfg = Config(dataset="digits", method="separation", channel=added, eps=0.1, n_bits=100)
    assert 12 <= cfg.latent_bits < 100
    from iabf.separation import ldpc_transmit
    bits = (torch.rand(50, 40, generator=gen) < 0.5).float()
    assert torch.equal(ldpc_transmit(bits, 100, 0.0, added, 20, gen), bits)
