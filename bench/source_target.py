"""From a source task to a target task, and whether transfer helped (issue 9).

    .venv/bin/python bench/source_target.py                 # all three parts (about 30-40 min on 2 CPU cores)
    .venv/bin/python bench/source_target.py --parts digits

1. digits (the articles' own example): source = scikit-learn digits 0-4 (all their images), target =
   digits 5-9 with 5, 10, 20 and all training examples per class (validation: a seeded 20% of 5-9).
   (a) the small ConvNet (two convolutions, two dense layers) from scratch on the target; (b) the same
   ConvNet trained on the source, then fine-tuned on the target (`--model run:SOURCE`); (c)
   EfficientNet-Lite0 from ImageNet (lp_ft at 64 px). 3 seeds; paired-bootstrap verdicts on the
   validation examples, pooled over seeds.
2. hymenoptera: cifar_resnet56 (CIFAR-10) against efficientnet_lite0 (ImageNet), each against its own
   architecture trained from scratch (`--baseline scratch`).
3. text: masked-LM continued pretraining of minilm_l6 on unlabelled SST-2 training sentences
   (`transferkit adapt`), then fine-tuning with 32 and 128 examples per class, against no continued
   pretraining; 3 seeds; SST-2 test.tsv (GLUE dev).
Writes bench/results/source_target.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HYM = ROOT.parent / "shared" / "data" / "hymenoptera"
SST = ROOT.parent / "shared" / "data" / "text" / "sst2"


def _fit(**flat):
    from transferkit import report
    from transferkit.config import RunConfig, replace
    from transferkit.fit import fit

    out = flat.pop("out", None)
    t0 = time.perf_counter()
    r = fit(replace(RunConfig(), **flat), out, overwrite=True, console=report.console(quiet=True))
    r.metrics["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return r


def _pooled(y_list, a_list, b_list, label):
    """Paired bootstrap over the validation examples of every seed together, and its verdict."""
    from transferkit.metrics import paired_bootstrap, verdict

    y, a, b = (np.concatenate(v) for v in (y_list, a_list, b_list))
    boot = paired_bootstrap(y, a, b, seed=0)
    return {**boot, "verdict": verdict(boot, label)}


def digits(seeds, tmp: Path) -> dict:
    SMALL = {"strategy": "full", "epochs": 15, "batch_size": 32}
    sources = {}
    for s in seeds:
        r = _fit(data="digits:0-4", model="small_convnet", seed=s, out=tmp / f"src{s}", **SMALL)
        sources[s] = {"dir": tmp / f"src{s}", "accuracy": r.metrics["accuracy"]}
        print(json.dumps({"part": "digits", "source_seed": s, "source_accuracy": round(100 * r.metrics["accuracy"], 2)}), flush=True)
    rows = []
    for shots in (5, 10, 20, None):
        acc = {"scratch": [], "source": [], "imagenet": []}
        y, pred = [], {"scratch": [], "source": [], "imagenet": []}
        for s in seeds:
            runs = {
                "scratch": _fit(data="digits:5-9", model="small_convnet", seed=s, shots=shots, **SMALL),
                "source": _fit(data="digits:5-9", model=f"run:{sources[s]['dir']}", seed=s, shots=shots, **SMALL),
                "imagenet": _fit(data="digits:5-9", model="efficientnet_lite0", seed=s, shots=shots, input_size=64),
            }
            y.append(_val_labels(s))
            for k, r in runs.items():
                acc[k].append(100 * r.metrics["accuracy"])
                pred[k].append(r.val_proba.argmax(1))
            print(json.dumps({"part": "digits", "shots": shots, "seed": s, **{k: round(v[-1], 2) for k, v in acc.items()}}), flush=True)
        rows.append({
            "shots": shots or "all", "acc": acc,
            "source_vs_scratch": _pooled(y, pred["source"], pred["scratch"], "the small ConvNet from scratch"),
            "imagenet_vs_scratch": _pooled(y, pred["imagenet"], pred["scratch"], "the small ConvNet from scratch"),
            "source_vs_imagenet": _pooled(y, pred["source"], pred["imagenet"], "EfficientNet-Lite0 from ImageNet"),
        })
    return {"source_accuracy": {s: v["accuracy"] for s, v in sources.items()}, "rows": rows}


def _val_labels(seed: int) -> np.ndarray:
    from transferkit.data import load_image_data

    return load_image_data("digits:5-9", val_fraction=0.2, seed=seed).val.labels


def hymenoptera(seeds) -> list[dict]:
    out = []
    for model in ("cifar_resnet56", "efficientnet_lite0"):
        for s in seeds:
            r = _fit(data=str(HYM), model=model, seed=s, baseline="scratch")
            m = r.metrics
            out.append({"model": model, "seed": s, "accuracy": 100 * m["accuracy"], "scratch": 100 * m["scratch"]["accuracy"],
                        "verdict_scratch": m["verdict_scratch"], "baseline": 100 * m["baseline"]["accuracy"], "verdict": m["verdict"], "wall_s": m["bench_wall_s"]})
            print(json.dumps({"part": "hymenoptera", **out[-1]}), flush=True)
    return out


def text(seeds, tmp: Path, n_unlabelled: int, mlm_epochs: int, head_steps: int | None = None) -> dict:
    import csv

    from transferkit import report
    from transferkit.adapt import adapt
    from transferkit.config import RunConfig, replace

    with open(SST / "train.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, train = rows[0], rows[1:]
    data = tmp / "sst2"
    data.mkdir()
    (data / "train.tsv").write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in train), encoding="utf-8")
    with open(SST / "dev.tsv", encoding="utf-8") as f:
        dev = f.read().splitlines()
    (data / "val.tsv").write_text("\n".join(dev[:1001]) + "\n", encoding="utf-8")
    (data / "test.tsv").write_bytes((SST / "test.tsv").read_bytes())
    unl = tmp / "unlabelled.txt"
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train), size=min(n_unlabelled, len(train)), replace=False)
    unl.write_text("\n".join(train[i][0] for i in pick) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    info = adapt(replace(RunConfig(), data=str(unl), model="minilm_l6", max_length=64, batch_size=32), tmp / "mlm", epochs=mlm_epochs,
                 head_steps=head_steps, console=report.console(quiet=True), overwrite=True)
    adapt_s = time.perf_counter() - t0
    print(json.dumps({"part": "text", "adapt": info}), flush=True)
    res = []
    for shots in (32, 128):
        acc = {"minilm_l6": [], "adapted": []}
        for s in seeds:
            for name, model in (("minilm_l6", "minilm_l6"), ("adapted", f"run:{tmp / 'mlm'}")):
                r = _fit(data=str(data), model=model, seed=s, shots=shots, strategy="full", epochs=5, max_length=64, batch_size=16)
                acc[name].append(100 * r.metrics["test"]["accuracy"])
            print(json.dumps({"part": "text", "shots": shots, "seed": s, **{k: round(v[-1], 2) for k, v in acc.items()}}), flush=True)
        res.append({"shots": shots, "acc": acc})
    return {"adapt": info, "adapt_s": round(adapt_s, 1), "rows": res}


def _ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}"


def tables(res: dict) -> str:
    lines = []
    if "digits" in res:
        d = res["digits"]
        src = ", ".join(f"{100 * a:.1f}" for a in d["source_accuracy"].values())
        lines += [
            f"### digits: source 0-4 (small ConvNet, validation accuracy per seed: {src}%), target 5-9, validation accuracy % (mean ± sd, 3 seeds)", "",
            "| examples per class | (a) scratch | (b) source -> target | (c) ImageNet Lite0 | (b) vs (a) | (c) vs (a) | (b) vs (c) |", "|---|---|---|---|---|---|---|",
        ]
        for r in d["rows"]:
            a = r["acc"]
            lines.append(f"| {r['shots']} | {_ms(a['scratch'])} | {_ms(a['source'])} | {_ms(a['imagenet'])} | "
                         f"{_v(r['source_vs_scratch'])} | {_v(r['imagenet_vs_scratch'])} | {_v(r['source_vs_imagenet'])} |")
        lines.append("")
    if "hymenoptera" in res:
        lines += ["### hymenoptera: each model against its own architecture from scratch (same data, same epochs)", "",
                  "| model | seed | accuracy % | scratch % | verdict vs scratch | raw-pixel LR % |", "|---|---|---|---|---|---|"]
        for r in res["hymenoptera"]:
            lines.append(f"| {r['model']} | {r['seed']} | {r['accuracy']:.2f} | {r['scratch']:.2f} | {r['verdict_scratch']} | {r['baseline']:.2f} |")
        lines.append("")
    for key in sorted(k for k in res if k.startswith("text")):
        t = res[key]
        a = t["adapt"]
        hs = a.get("head_steps", 0)
        head = (f"the new masked-LM head first trained alone for {hs} steps (loss {a['head_first_loss']:.2f} -> {a['head_last_loss']:.2f}), then "
                if hs else "no head warm-up (the new masked-LM head and the encoder trained together from the first step), ")
        lines += [f"### text: masked-LM continued pretraining of minilm_l6 on {a['texts']} unlabelled SST-2 sentences: {head}"
                  f"{a['steps']} steps of the whole model (loss {a['first_loss']:.2f} -> {a['last_loss']:.2f}), {t['adapt_s']:.0f} s; "
                  "then full fine-tuning, 5 epochs; SST-2 test accuracy % (mean ± sd, 3 seeds)", "",
                  "| examples per class | minilm_l6 | adapted minilm_l6 | gain (points) | per seed (adapted - not) |", "|---|---|---|---|---|"]
        for r in t["rows"]:
            x, y = r["acc"]["minilm_l6"], r["acc"]["adapted"]
            per = ", ".join(f"{b - c:+.1f}" for b, c in zip(y, x))
            lines.append(f"| {r['shots']} | {_ms(x)} | {_ms(y)} | {statistics.mean(y) - statistics.mean(x):+.2f} | {per} |")
        lines.append("")
    return "\n".join(lines)


def _v(b):
    return f"{100 * b['diff']:+.1f} [{100 * b['ci_low']:+.1f}, {100 * b['ci_high']:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["digits", "hymenoptera", "text"], choices=["digits", "hymenoptera", "text"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--hymenoptera-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--unlabelled", type=int, default=8000, help="SST-2 training sentences for masked-LM pretraining")
    ap.add_argument("--mlm-epochs", type=int, default=1)
    ap.add_argument("--head-steps", type=int, help="text: steps of the new masked-LM head alone (default: adapt's own, a quarter of the masked-LM steps)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    prev = out / "source_target.json"
    res: dict = json.loads(prev.read_text()) if prev.is_file() else {}  # parts run separately add up
    with tempfile.TemporaryDirectory(prefix="tk-bench-st-") as tmp:
        tmp = Path(tmp)
        if "digits" in args.parts:
            res["digits"] = digits(args.seeds, tmp)
        if "hymenoptera" in args.parts:
            res["hymenoptera"] = hymenoptera(args.hymenoptera_seeds)
        if "text" in args.parts:
            key = "text" if args.head_steps is None else f"text_head_steps_{args.head_steps}"
            res[key] = text(args.seeds, tmp, args.unlabelled, args.mlm_epochs, args.head_steps)
    (out / "source_target.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    text_ = tables(res)
    print("\n" + text_)
    (out / "source_target.md").write_text(text_ + "\n")


if __name__ == "__main__":
    import os

    os.environ.setdefault("TRANSFERKIT_WEIGHTS_DIR", str(ROOT.parent / "shared" / "data" / "cifar10_resnet_akamaster"))
    main()
