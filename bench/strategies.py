"""Every strategy on hymenoptera and on digits, several seeds: accuracy (mean, spread) and wall time.

    .venv/bin/python bench/strategies.py                       # all strategies, both datasets, 3 seeds
    .venv/bin/python bench/strategies.py --data hymenoptera --strategies lp_ft --seeds 0 1 2

Prints a Markdown table, and writes it with a plot to bench/results/strategies.{md,png}.
Data: ../shared/data/hymenoptera (development data, not shipped) and scikit-learn's digits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"hymenoptera": str(ROOT.parent / "shared" / "data" / "hymenoptera"), "digits": "digits"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--strategies", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--set", nargs="*", default=[], help="extra settings as key=value (flat names)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from transferkit import report
    from transferkit.config import RunConfig, replace
    from transferkit.fit import fit
    from transferkit.strategies import STRATEGIES

    extra = dict(kv.split("=", 1) for kv in args.set)
    strategies = args.strategies or STRATEGIES.names()
    rows = []
    for data in args.data:
        for strat in strategies:
            accs, walls = [], []
            for seed in args.seeds:
                cfg = replace(RunConfig(), data=DATASETS[data], model=args.model, strategy=strat, seed=seed, **extra)
                t0 = time.perf_counter()
                r = fit(cfg, None, console=report.console(quiet=True))
                walls.append(time.perf_counter() - t0)
                accs.append(100 * r.metrics["accuracy"])
                print(json.dumps({"data": data, "strategy": strat, "seed": seed, "accuracy": round(accs[-1], 2), "wall_s": round(walls[-1], 1),
                                  "baseline": round(100 * r.metrics["baseline"]["accuracy"], 2), "verdict": r.metrics["verdict"]}), flush=True)
            rows.append({
                "data": data, "strategy": strat, "mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "min": min(accs), "max": max(accs), "wall": statistics.mean(walls), "n": len(accs),
                "baseline": 100 * r.metrics["baseline"]["accuracy"],
            })
    lines = ["| data | strategy | accuracy % mean ± sd (min-max) | wall s (mean) | seeds | raw-pixel LR % |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['strategy']} | {r['mean']:.2f} ± {r['sd']:.2f} ({r['min']:.1f}-{r['max']:.1f}) | {r['wall']:.1f} | {r['n']} | {r['baseline']:.1f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "strategies.md").write_text(table + "\n")
    _plot(rows, out / "strategies.png")


def _plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        rs = [r for r in rows if r["data"] == d]
        ax.bar([r["strategy"] for r in rs], [r["mean"] for r in rs], yerr=[r["sd"] for r in rs], capsize=4, color="C0")
        ax.axhline(rs[0]["baseline"], color="C3", ls="--", label="raw-pixel LR")
        lo = min(min(r["min"] for r in rs), rs[0]["baseline"]) - 3
        ax.set(title=d, ylabel="validation accuracy (%)", ylim=(max(0, lo), 100))
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("TRANSFERKIT_CACHE_DIR", str(ROOT / ".cache"))
    main()
