"""Text transfer with minilm_l6 against a TF-IDF + logistic-regression baseline (issue 6).

    .venv/bin/python bench/text.py                       # CPU: SST-2 on a 3,000-sentence subset, SMS spam, learning curve
    .venv/bin/python bench/text.py --sst2-train 0        # the whole SST-2 training set (60,614 sentences; for a GPU)
    .venv/bin/python bench/text.py --parts sst2 --strategies full

1. SST-2: linear_probe, full, lp_ft and lora, each trained on a stratified subset of
   ../shared/data/text/sst2/train.tsv (or all of it), selected on 1,000 sentences of its dev.tsv, and
   scored on test.tsv (the official GLUE dev set, 872 sentences; MiniLM-L6-H384 fine-tuned: 91.5).
2. SMS spam (../shared/data/text/sms_spam, stratified 80/20 split): macro-F1 and AUROC of each
   strategy against TF-IDF; the best by validation macro-F1 is named.
3. Learning curve on SST-2: 8, 32, 128 and 1024 training sentences per class, 3 seeds, linear probe on
   cached sentence embeddings against TF-IDF, scored on test.tsv; a table and bench/results/text_curve.png.

Every figure comes from `transferkit.fit` with the same settings a user would give on the command line.
Writes bench/results/text.md (and .json).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "text"
STRATEGIES = ["linear_probe", "full", "lp_ft", "lora"]
# Recipe per strategy: rates as transferkit's defaults for text (1e-3 heads/adapters, 1e-4 whole encoder).
COMMON = {"model": "minilm_l6", "max_length": 64, "batch_size": 32, "epochs": 3, "eval_batch_size": 128}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["sst2", "sms", "curve"], choices=["sst2", "sms", "curve"])
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES, help="for SST-2")
    ap.add_argument("--sms-strategies", nargs="+", default=["linear_probe", "lp_ft"])
    ap.add_argument("--sst2-train", type=int, default=3000, help="SST-2 training sentences (stratified subset); 0 = all 60,614")
    ap.add_argument("--shots", nargs="+", type=int, default=[8, 32, 128, 1024])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"device": "cuda" if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory(prefix="tk-bench-text-") as tmp:
        tmp = Path(tmp)
        sst = make_sst2(tmp / "sst2", args.sst2_train)
        if "sst2" in args.parts:
            results["sst2"] = [run(sst, s) for s in args.strategies]
        if "sms" in args.parts:
            results["sms"] = [run(str(TEXT / "sms_spam" / "SMSSpamCollection"), s, metric="macro_f1") for s in args.sms_strategies]
        if "curve" in args.parts:
            full = make_sst2(tmp / "sst2-all", 0)
            results["curve"] = [
                run(full, "linear_probe", shots=n, seed=seed) for n in args.shots for seed in args.seeds
            ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.json").write_text(json.dumps(results, indent=1) + "\n")  # first: the table below must not lose them
    text = tables(results, args)
    print("\n" + text)
    (out / "text.md").write_text(text + "\n")
    if results.get("curve"):
        curve_plot(results["curve"], out / "text_curve.png")


def make_sst2(folder: Path, n_train: int) -> str:
    """train.tsv (a stratified subset, seed 0), val.tsv (1,000 sentences of dev.tsv), test.tsv (GLUE dev)."""
    folder.mkdir(parents=True, exist_ok=True)

    def read(name):
        with open(TEXT / "sst2" / name, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return rows[0], rows[1:]

    header, train = read("train.tsv")
    _, dev = read("dev.tsv")
    rng = random.Random(0)
    if n_train:
        by = {}
        for r in train:
            by.setdefault(r[1], []).append(r)
        train = [r for lab, rows in sorted(by.items()) for r in rng.sample(rows, round(n_train * len(rows) / len(train)))]
    rng.shuffle(dev)
    for name, rows in (("train.tsv", train), ("val.tsv", dev[:1000])):
        (folder / name).write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "test.tsv").write_bytes((TEXT / "sst2" / "test.tsv").read_bytes())
    return str(folder)


def run(data: str, strategy: str, *, shots: int | None = None, seed: int = 0, metric: str = "accuracy") -> dict:
    from transferkit import report
    from transferkit.config import RunConfig, replace, with_default_lr
    from transferkit.fit import fit

    cfg = with_default_lr(replace(RunConfig(), data=data, strategy=strategy, seed=seed, shots=shots, metric=metric, **COMMON))
    t0 = time.perf_counter()
    m = fit(cfg, None, console=report.console(quiet=True)).metrics
    wall = time.perf_counter() - t0
    row = {
        "data": Path(data).name, "strategy": strategy, "shots": shots, "seed": seed, "wall_s": round(wall, 1), "n_train": m["n_train"],
        "val": pick(m), "val_baseline": pick(m["baseline"]), "verdict": m["verdict"], "truncated": m.get("truncated_texts"),
        "texts_per_s": m.get("train_texts_per_s"), "lr": cfg.optim.lr,
    }
    if "test" in m:
        row["test"], row["test_baseline"] = pick(m["test"]), pick(m["test"]["baseline"])
    print(json.dumps(row), flush=True)
    return row


def pick(m: dict) -> dict:
    return {k: (round(100 * m[k], 2) if k == "accuracy" else round(m[k], 4)) if m.get(k) is not None else None for k in ("accuracy", "macro_f1", "auroc")}


def tables(res: dict, args) -> str:
    lines = [f"minilm_l6, settings {COMMON} (lr: transferkit's default per strategy), device {res['device']}", ""]
    if res.get("sst2"):
        n = res["sst2"][0]["n_train"]
        lines += [
            f"### SST-2: trained on {n} sentences{' (all)' if args.sst2_train == 0 else ' (stratified subset, seed 0)'}, "
            "selected on 1,000 dev sentences, scored on test.tsv (GLUE dev, 872)", "",
            "| method | test accuracy % | test macro-F1 | test AUROC | val accuracy % | wall s | training texts/s |", "|---|---|---|---|---|---|---|",
        ]
        for r in res["sst2"]:
            t = r["test"]
            lines.append(f"| {r['strategy']} (lr {r['lr']:g}) | {t['accuracy']:.2f} | {t['macro_f1']:.4f} | {t['auroc']:.4f} | {r['val']['accuracy']:.2f} | {r['wall_s']:.0f} | {r['texts_per_s'] or '-'} |")
        b = res["sst2"][0]["test_baseline"]
        lines += [f"| TF-IDF + logistic regression | {b['accuracy']:.2f} | {b['macro_f1']:.4f} | {b['auroc']:.4f} | {res['sst2'][0]['val_baseline']['accuracy']:.2f} | - | - |", ""]
    if res.get("sms"):
        best = max(res["sms"], key=lambda r: r["val"]["macro_f1"])
        lines += [
            "### SMS spam: stratified 80/20 split (seed 0), selection by macro-F1", "",
            "| method | accuracy % | macro-F1 | AUROC | wall s |", "|---|---|---|---|---|",
        ]
        for r in res["sms"]:
            v = r["val"]
            lines.append(f"| {r['strategy']}{' (best)' if r is best else ''} | {v['accuracy']:.2f} | {v['macro_f1']:.4f} | {v['auroc']:.4f} | {r['wall_s']:.0f} |")
        b = res["sms"][0]["val_baseline"]
        lines += [f"| TF-IDF + logistic regression | {b['accuracy']:.2f} | {b['macro_f1']:.4f} | {b['auroc']:.4f} | - |", "", f"best: {best['strategy']}; {best['verdict']}", ""]
    if res.get("curve"):
        lines += [
            "### SST-2 learning curve: linear probe on minilm_l6 embeddings vs TF-IDF, test accuracy % (mean ± sd over seeds)", "",
            "| examples per class | minilm_l6 linear probe | TF-IDF + LR | gain (points) |", "|---|---|---|---|",
        ]
        for n, rows in _by_shots(res["curve"]).items():
            a = [r["test"]["accuracy"] for r in rows]
            b = [r["test_baseline"]["accuracy"] for r in rows]
            lines.append(f"| {n} | {_ms(a)} | {_ms(b)} | {statistics.mean(a) - statistics.mean(b):+.1f} |")
    return "\n".join(lines)


def _by_shots(rows):
    out: dict = {}
    for r in rows:
        out.setdefault(r["shots"], []).append(r)
    return out


def _ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}"


def curve_plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _by_shots(rows)
    xs = sorted(by)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in (("test", "minilm_l6 linear probe"), ("test_baseline", "TF-IDF + logistic regression")):
        m = [statistics.mean(r[key]["accuracy"] for r in by[x]) for x in xs]
        s = [statistics.stdev([r[key]["accuracy"] for r in by[x]]) if len(by[x]) > 1 else 0 for x in xs]
        ax.errorbar(xs, m, yerr=s, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training examples per class")
    ax.set_ylabel("SST-2 test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
