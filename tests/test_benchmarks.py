"""The benchmark scripts run and print their figures (tiny sizes: this checks the scripts, not speed)."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import datasets  # noqa: E402
import stacked_seeds  # noqa: E402


def test_stacked_seeds_prints_a_ratio_per_stack(capsys):
    assert stacked_seeds.main(["--dataset", "digits", "--examples", "200", "--repeats", "1", "--stacks", "2", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[23]\s", line)]
    assert [r[0] for r in rows] == ["2", "3"]
    for S, separate, together, per_seed, ratio in ((int(r[0]), *map(float, r[1:])) for r in rows):
        assert separate > 0 and together > 0
        assert abs(together / S - per_seed) <= 1 and abs(together / separate - ratio) < 0.2


def test_the_dataset_benchmark_prints_training_and_validation_speed_per_method(capsys, data_dir):
    assert datasets.main(["--data-dir", str(data_dir), "--datasets", "omniglot"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("omniglot"))
    necst, abf, iabf, val_seconds = map(float, row[1:5])
    assert min(necst, abf, iabf) > 0 and 0 < val_seconds < 60 and row[-2] == "500"   # omniglot's 500 validation images


def test_the_dataset_benchmark_sets_bf16_beside_fp32_with_the_ratio(capsys, data_dir, monkeypatch):
    monkeypatch.setitem(datasets.TRAIN_EXAMPLES, "omniglot", 300)      # bf16 is emulated (slow) on some CPUs
    assert datasets.main(["--data-dir", str(data_dir), "--datasets", "omniglot", "--precision", "fp32", "bf16"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"bf16 kernels on this CPU \(AVX512_BF16 or AMX\): (yes|no); fp32 -> bf16", out)
    row = next(line for line in out.splitlines() if line.startswith("omniglot"))
    pairs = re.findall(r"([\d.]+) -> +([\d.]+) \(([\d.]+)x\)", row)
    assert len(pairs) == 4                                              # 3 methods and the validation pass
    for a, b, ratio in ((float(a), float(b), float(r)) for a, b, r in pairs[:3]):
        assert a > 0 and b > 0 and abs(b / a - ratio) < 0.01 + 0.01 * ratio


def test_the_sequential_benchmark_prints_the_error_and_the_savings(capsys):
    import sequential

    sequential.main(["--studies", "6", "--cells", "1", "--batch", "3", "--max", "9", "--permutations", "500",
                     "--workers", "1", "--effect", "3"])
    out = capsys.readouterr().out
    assert "null: family-wise error" in out and "fixed design" in out
    effect = next(line for line in out.splitlines() if line.startswith("effect 3 sd"))
    seeds = float(effect.split("mean seeds per arm ")[1].split()[0])
    assert 6 <= seeds < 9 and "power 1.000" in effect        # three sds: found at the second look in every study
