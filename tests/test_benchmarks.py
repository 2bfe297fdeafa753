"""The benchmark scripts run and print their figures (tiny sizes: this checks the scripts, not speed)."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import stacked_seeds  # noqa: E402


def test_stacked_seeds_prints_a_ratio_per_stack(capsys):
    assert stacked_seeds.main(["--dataset", "digits", "--examples", "200", "--repeats", "1", "--stacks", "2", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[23]\s", line)]
    assert [r[0] for r in rows] == ["2", "3"]
    for S, separate, together, per_seed, ratio in ((int(r[0]), *map(float, r[1:])) for r in rows):
        assert separate > 0 and together > 0
        assert abs(together / S - per_seed) <= 1 and abs(together / separate - ratio) < 0.2
