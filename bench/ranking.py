"""Do transferability scores predict which model fine-tunes best, and how much cheaper are they?

    .venv/bin/python bench/ranking.py            # hymenoptera and digits (64 px), 6 candidates, 3 seeds (over an hour on 2 CPU cores)
    .venv/bin/python bench/ranking.py --quick    # hymenoptera; efficientnet_lite0, cifar_resnet20, random control; 1 seed; epochs=1
    .venv/bin/python bench/ranking.py --data digits --seeds 0 1 --set epochs=2 lp_epochs=50

For each dataset: rank every candidate on a cold feature cache (the time a user waits the first
time), rank again (warm: every feature from the cache), then fine-tune every candidate with
transferkit's default recipe over the seeds. Reports, per score, Kendall's tau and weighted tau
(top ranks weigh more) against the fine-tuned mean validation accuracy, the model each score
picks and its regret (best mean accuracy minus the pick's), and ranking time against fine-tuning
time. LEEP and NCE leave out models without a source classifier (the random control).

Prints Markdown tables; the full run also writes them to bench/results/ranking.{md,json}.
Data: ../shared/data/hymenoptera (development data, not shipped) and scikit-learn's digits;
CIFAR ResNet weights from ../shared/data/cifar10_resnet_akamaster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"hymenoptera": str(ROOT.parent / "shared" / "data" / "hymenoptera"), "digits": "digits"}
CANDIDATES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "cifar_resnet20", "cifar_resnet56", "random:efficientnet_lite0"]
# Digits' 8x8 images gain nothing from 224 px and cost 12x more: every candidate ranks and fine-tunes at 64 px there.
PER_DATASET = {"digits": {"input_size": "64"}}
QUICK = {"data": ["hymenoptera"], "candidates": ["efficientnet_lite0", "cifar_resnet20", "random:efficientnet_lite0"], "seeds": [0], "set": ["epochs=1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: " + json.dumps(QUICK))
    ap.add_argument("--data", nargs="+", choices=list(DATASETS))
    ap.add_argument("--candidates", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--set", nargs="*", help="fit settings as key=value (flat names), e.g. epochs=1 lp_epochs=20")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a machine shared with other work)")
    ap.add_argument("--out", help="write ranking.md / ranking.json here (default: bench/results for a full run, nowhere for --quick)")
    args = ap.parse_args()
    base = QUICK if args.quick else {"data": list(DATASETS), "candidates": CANDIDATES, "seeds": [0, 1, 2], "set": []}
    data = args.data or base["data"]
    candidates = args.candidates or base["candidates"]
    seeds = args.seeds or base["seeds"]
    extra = dict(kv.split("=", 1) for kv in (args.set if args.set is not None else base["set"]))
    out = args.out or (None if args.quick else str(ROOT / "bench" / "results"))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    results = []
    for name in data:
        results.append(run_dataset(name, candidates, seeds, extra))
        print("\n" + tables(results[-1]), flush=True)  # each dataset's tables as soon as it is done
    text = "\n\n".join(tables(r) for r in results)
    print("\n" + text)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        settings = f"seeds {seeds}, fit settings {extra or 'default'}"
        (Path(out) / "ranking.md").write_text(f"Transferability ranking vs fine-tuning ({settings})\n\n{text}\n")
        (Path(out) / "ranking.json").write_text(json.dumps(results, indent=1) + "\n")


def run_dataset(name: str, candidates: list[str], seeds: list[int], extra: dict) -> dict:
    from transferkit import report
    from transferkit.config import RunConfig, replace
    from transferkit.fit import fit
    from transferkit.ranking import rank_models

    spec = DATASETS[name]
    extra = {**PER_DATASET.get(name, {}), **extra}
    size = int(extra["input_size"]) if "input_size" in extra else None
    log = lambda msg: print(f"[{name}] {msg}", flush=True)  # noqa: E731
    cold = rank_models(spec, candidates, input_size=size, log=log)
    warm = rank_models(spec, candidates, input_size=size)
    print(cold.table(), flush=True)

    acc: dict[str, list[float]] = {}
    fit_s: dict[str, float] = {}
    for model in candidates:
        t0 = time.perf_counter()
        for seed in seeds:
            r = fit(replace(RunConfig(), data=spec, model=model, seed=seed, **extra), None, console=report.console(quiet=True))
            acc.setdefault(model, []).append(100 * r.metrics["accuracy"])
            print(json.dumps({"data": name, "model": model, "seed": seed, "accuracy": round(acc[model][-1], 2)}), flush=True)
        fit_s[model] = time.perf_counter() - t0
    return {
        "data": name,
        "seeds": seeds,
        "settings": extra,
        "models": {
            row.name: {"scores": row.scores, "num_features": row.num_features, "acc": acc[row.name], "fit_s": round(fit_s[row.name], 1)}
            for row in cold.rows
        },
        "correlations": correlations(cold, acc),
        "rank_cold_s": cold.wall_s,
        "rank_warm_s": warm.wall_s,
        "warm_cache_hits": sum(r.cache_hit for r in warm.rows),
        "fit_all_s": round(sum(fit_s.values()), 1),
    }


def correlations(ranking, acc: dict[str, list[float]]) -> list[dict]:
    """Per score: agreement of its order with the fine-tuned mean accuracy over the models it scores."""
    from scipy.stats import kendalltau, weightedtau

    from transferkit.ranking import SCORES

    mean = {m: statistics.mean(a) for m, a in acc.items()}
    best = max(mean.values())
    out = []
    for s in SCORES.names():
        models = [r.name for r in ranking.rows if r.scores.get(s) is not None]
        x = [next(r for r in ranking.rows if r.name == m).scores[s] for m in models]
        y = [mean[m] for m in models]
        tau = kendalltau(x, y).statistic if len(models) >= 2 else math.nan
        wtau = weightedtau(x, y).statistic if len(models) >= 2 else math.nan
        pick = models[max(range(len(models)), key=x.__getitem__)] if models else None
        controls = [m for m in models if m.startswith("random:")]
        last = min(range(len(models)), key=x.__getitem__) if models else None
        out.append({
            "score": s, "n": len(models), "tau": tau, "weighted_tau": wtau, "pick": pick,
            "regret": best - mean[pick] if pick else math.nan,
            "control_last": (models[last] in controls) if controls else None,
        })
    return out


def tables(r: dict) -> str:
    from transferkit.ranking import SCORES

    names = SCORES.names()
    lines = [f"### {r['data']}: fine-tuned accuracy (seeds {r['seeds']}, settings {r['settings'] or 'default'}) and scores", ""]
    lines.append("| model | dim | accuracy % mean ± sd | fine-tune s | " + " | ".join(SCORES.get(n).label for n in names) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(names))
    for m, v in r["models"].items():
        sd = statistics.stdev(v["acc"]) if len(v["acc"]) > 1 else 0.0
        vals = " | ".join(f"{v['scores'][n]:.4f}" if v["scores"].get(n) is not None else "n/a" for n in names)
        lines.append(f"| {m} | {v['num_features']} | {statistics.mean(v['acc']):.2f} ± {sd:.2f} | {v['fit_s']:.0f} | {vals} |")
    lines += ["", "| score | models | Kendall tau | weighted tau | pick | regret (points) | random control last |", "|---|---|---|---|---|---|---|"]
    for c in r["correlations"]:
        last = "n/a" if c["control_last"] is None else ("yes" if c["control_last"] else "NO")
        lines.append(f"| {c['score']} | {c['n']} | {_f(c['tau'])} | {_f(c['weighted_tau'])} | {c['pick']} | {c['regret']:.2f} | {last} |")
    ratio = r["fit_all_s"] / r["rank_cold_s"] if r["rank_cold_s"] else math.nan
    lines += [
        "",
        "| rank, cold cache s | rank, warm cache s (hits) | fine-tune all candidates s | fine-tuning / ranking |",
        "|---|---|---|---|",
        f"| {r['rank_cold_s']:.1f} | {r['rank_warm_s']:.1f} ({r['warm_cache_hits']}/{len(r['models'])}) | {r['fit_all_s']:.0f} | {ratio:.1f}x |",
    ]
    return "\n".join(lines)


def _f(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:+.2f}"


if __name__ == "__main__":
    # A fresh feature cache, so the cold ranking time is what a first ranking costs.
    os.environ.setdefault("TRANSFERKIT_CACHE_DIR", tempfile.mkdtemp(prefix="transferkit-bench-ranking-"))
    os.environ.setdefault("TRANSFERKIT_WEIGHTS_DIR", str(ROOT.parent / "shared" / "data" / "cifar10_resnet_akamaster"))
    main()
