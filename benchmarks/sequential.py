"""Does the adaptive confirmation keep its error, and what does it save? Simulated studies of a shipped design
(analysis/sequential.py; no training): per-seed values drawn from known normal distributions, 3 arms in each
of `--cells` cells (NECST, ABF, IABF: the report's 3 comparisons per cell).

  null:    every arm the same: the family-wise error (any comparison decided), against alpha
  effect:  IABF better than NECST and ABF by `--effect` seed-to-seed standard deviations in every cell:
           the power on those comparisons and the mean seeds per arm, against a fixed design of `max` seeds
           (Welch's t-test per comparison, Holm over the family)

    python benchmarks/sequential.py --studies 2000 --cells 3 --batch 3 --max 12 --effect 1.5
"""
from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from analysis.sequential import BETTER, SPENDING, WORSE, Design, decide, family, outcome
from analysis.significance import holm, welch_samples


def one_study(args: tuple) -> dict:
    design, cells, effect, seed = args
    rng = np.random.default_rng(seed)
    arms = [f"c{c} | {m}" for c in range(cells) for m in ("necst", "abf", "iabf")]
    pairs = family({a: a.split(" | ")[1] for a in arms})
    values = {a: {s: float(rng.normal(-effect if a.endswith("iabf") else 0.0, 1.0)) for s in range(design.max)}
              for a in arms}
    looks, _ = decide(design, values, pairs, "min")
    decided = outcome(looks, pairs)
    fixed = holm(pd.Series([welch_samples(list(values[a].values()), list(values[b].values()))[2] for a, b in pairs]))
    true = [p for p in pairs if p[0].endswith("iabf")] if effect else []
    null = [p for p in pairs if p not in true]
    seeds = {a: max(decided[p][2] for p in pairs if a in p) for a in arms}
    return {"false": any(decided[p][0] in (BETTER, WORSE) for p in null),
            "fixed_false": any(fixed[i] < design.alpha for i, p in enumerate(pairs) if p in null),
            "power": np.mean([decided[p][0] == BETTER for p in true]) if true else math.nan,
            "fixed_power": np.mean([fixed[i] < design.alpha for i, p in enumerate(pairs) if p in true]) if true
            else math.nan, "seeds": np.mean(list(seeds.values()))}


def run(design: Design, cells: int, effect: float, studies: int, workers: int, seed: int) -> pd.DataFrame:
    jobs = [(design, cells, effect, seed * 100_000 + i) for i in range(studies)]
    with ProcessPoolExecutor(workers) as pool:
        return pd.DataFrame(pool.map(one_study, jobs, chunksize=4))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=3)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--max", type=int, default=12)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--permutations", type=int, default=10000)
    ap.add_argument("--effect", type=float, default=1.5)
    ap.add_argument("--spending", choices=sorted(SPENDING), default=Design.spending)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    design = Design(args.batch, args.max, args.alpha, args.permutations, args.spending)
    print(f"design: {design}; {args.cells} cells x 3 arms, {3 * args.cells} comparisons; {args.studies} studies each")
    for name, effect in (("null", 0.0), (f"effect {args.effect:g} sd", args.effect)):
        t = time.perf_counter()
        r = run(design, args.cells, effect, args.studies, args.workers, seed=1 if effect else 0)
        se = math.sqrt(max(r.false.mean() * (1 - r.false.mean()), 1e-12) / len(r))
        line = (f"{name}: family-wise error {r.false.mean():.3f} (MC s.e. {se:.3f}; fixed design "
                f"{r.fixed_false.mean():.3f}); mean seeds per arm {r.seeds.mean():.2f} of {design.max} "
                f"({r.seeds.mean() / design.max:.0%})")
        if effect:
            line += (f"; power {r.power.mean():.3f} (fixed design of {design.max} seeds: {r.fixed_power.mean():.3f}, "
                     f"ratio {r.power.mean() / max(r.fixed_power.mean(), 1e-9):.2f})")
        print(f"{line}  [{time.perf_counter() - t:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
