"""Texts in batches of similar length (`--group-by-length`) against batches drawn at random (the
default): fine-tuning time and held-out accuracy.

    .venv/bin/python bench/group_by_length.py [--seeds 0 1] [--epochs 1] [--only SST-2] [--no-predict]
    .venv/bin/python bench/group_by_length.py --adapt [--seeds 0 1] [--epochs 2 --only-grouped]   # `adapt` (masked-LM) instead

Two datasets of 2,000 training texts each, full fine-tuning of minilm_l6 (128 tokens at most), the
two settings alternating run by run (this machine's speed drifts within the hour):
- SST-2: the first 2,000 rows of train.tsv, validated on the first 500 of dev.tsv, tested on test.tsv
  (the GLUE dev set, 872 sentences);
- SMS spam: rows 0-1,999 train, 2,000-2,499 validation, 2,500-3,499 test.
Then prediction alone: `TextClassifier.predict_proba` of one fitted model on all 5,574 SMS texts, rows
in their order (what it does: passes longest first, the rows put back) against passes in file order;
and the linear probe's feature pass over the same texts, both ways.

`--adapt`: `transferkit adapt` (masked-LM pretraining of minilm_l6, 1 epoch, batch 32) on SST-2's first
2,000 training sentences, 100 of them held out (seeded, the same in both settings): masked-LM time and
the held-out loss before and after, the two settings alternating.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "text"


def datasets(tmp: Path) -> dict[str, Path]:
    sst = tmp / "sst2"
    sst.mkdir()
    train = (TEXT / "sst2" / "train.tsv").read_text().splitlines()
    dev = (TEXT / "sst2" / "dev.tsv").read_text().splitlines()
    (sst / "train.tsv").write_text("\n".join(train[:2001]) + "\n")
    (sst / "val.tsv").write_text("\n".join(dev[:501]) + "\n")
    (sst / "test.tsv").write_text((TEXT / "sst2" / "test.tsv").read_text())
    sms = tmp / "sms"
    sms.mkdir()
    rows = [line.split("\t", 1) for line in (TEXT / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines() if "\t" in line]
    rows = [(t.replace("\t", " ").replace('"', "'"), lab) for lab, t in rows]
    for name, (i, j) in {"train": (0, 2000), "val": (2000, 2500), "test": (2500, 3500)}.items():
        (sms / f"{name}.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows[i:j]), encoding="utf-8")
    return {"SST-2": sst, "SMS spam": sms}


def fit(data: Path, out: Path, seed: int, epochs: int, grouped: bool) -> dict:
    cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--data", str(data), "--out", str(out), "--model", "minilm_l6", "--strategy", "full",
           "--epochs", str(epochs), "--seed", str(seed), "--quiet"] + (["--group-by-length"] if grouped else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    m = json.loads((out / "metrics.json").read_text())
    t = m["timing"]
    return {"command_s": time.perf_counter() - t0, "train_s": t["train_seconds"], "finetune_s": t["finetune_s"], "texts_per_s": m["train_texts_per_s"],
            "val_accuracy": 100 * m["accuracy"], "test_accuracy": 100 * m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"]}


def predict_timing(run: Path) -> dict:
    import torch

    from transferkit import TextClassifier, memory, trainer

    texts = [line.split("\t", 1)[1] for line in (TEXT / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines() if "\t" in line]
    clf = TextClassifier.load(run)
    out = {}
    for label, order in (("longest first", memory.longest_first), ("file order", lambda x: None)) * 2:
        trainer.longest_first = order
        t0 = time.perf_counter()
        p = clf.predict_proba(texts)
        out.setdefault(label, []).append(time.perf_counter() - t0)
        out.setdefault(label + " proba", p)
    trainer.longest_first = memory.longest_first
    diff = float(np.abs(out["longest first proba"] - out["file order proba"]).max())
    return {"texts": len(texts), "threads": torch.get_num_threads(), "longest_first_s": out["longest first"], "file_order_s": out["file order"],
            "largest_probability_difference": diff}


def features_timing() -> dict:
    """The linear probe's feature pass (`features.compute_features`) of minilm_l6 over all 5,574 SMS
    texts, longest first (what it does) against file order."""
    from transferkit import memory
    from transferkit.backbones import create_backbone
    from transferkit.features import compute_features

    bb = create_backbone("minilm_l6")
    texts = [line.split("\t", 1)[1] for line in (TEXT / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines() if "\t" in line]
    x, _ = bb.tokenize(texts, 128)
    out, feats, original = {}, {}, memory.longest_first
    for label, fn in (("longest_first_s", original), ("file_order_s", lambda x: None)):
        memory.longest_first = fn  # compute_features imports it from memory at each call
        t0 = time.perf_counter()
        feats[label] = compute_features(bb, x, 128, batch_size=32)
        out[label] = time.perf_counter() - t0
    memory.longest_first = original
    out["largest_feature_difference"] = float((feats["longest_first_s"] - feats["file_order_s"]).abs().max())
    return out


def adapt_rows(tmp: Path, seeds: list[int], epochs: int, only_grouped: bool) -> None:
    data = tmp / "sst2-2000.tsv"
    data.write_text("\n".join((TEXT / "sst2" / "train.tsv").read_text().splitlines()[:2001]) + "\n")
    rows = []
    for seed in seeds:
        for grouped in (True,) if only_grouped else (True, False) if seed % 2 == 0 else (False, True):
            out = tmp / f"adapt-{seed}-{grouped}"
            cmd = [sys.executable, "-m", "transferkit.cli", "adapt", "--data", str(data), "--model", "minilm_l6", "--out", str(out),
                   "--seed", str(seed), "--epochs", str(epochs), "--quiet"] + (["--group-by-length"] if grouped else [])
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            info = json.loads((out / "adapt.json").read_text())
            rows.append({"seed": seed, "epochs": epochs, "batches": "grouped by length" if grouped else "random", "command_s": time.perf_counter() - t0,
                         "mlm_s": info["seconds"], "texts": info["texts"], "heldout": info["heldout"]})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| batches | masked-LM s (each seed) | held-out loss before -> after (each seed) |")
    print("|---|---|---|")
    for b in ("random", "grouped by length"):
        rs = [r for r in rows if r["batches"] == b]
        if not rs:
            continue
        each = ", ".join(f"{r['mlm_s']:.1f}" for r in rs)
        print(f"| {b} | {np.mean([r['mlm_s'] for r in rs]):.1f} ({each}) | "
              + ", ".join(f"{r['heldout']['loss_before']:.3f} -> {r['heldout']['loss_after']:.3f}" for r in rs) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--only", choices=["SST-2", "SMS spam"])
    ap.add_argument("--no-predict", action="store_true", help="skip the prediction timing")
    ap.add_argument("--adapt", action="store_true", help="`adapt` (masked-LM) rows instead of `fit`")
    ap.add_argument("--only-grouped", action="store_true", help="--adapt: grouped batches only (e.g. with --epochs 2: the random batches' time)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-group-") as d:
        tmp = Path(d)
        if a.adapt:
            return adapt_rows(tmp, a.seeds, a.epochs, a.only_grouped)
        for name, data in datasets(tmp).items():
            if a.only and name != a.only:
                continue
            for seed in a.seeds:
                for grouped in (True, False) if seed % 2 == 0 else (False, True):
                    r = fit(data, tmp / f"{name[:3]}-{seed}-{grouped}", seed, a.epochs, grouped)
                    rows.append({"data": name, "seed": seed, "batches": "grouped by length" if grouped else "random", **r})
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
        print("\n| data | batches | training s (each seed) | texts/s | validation accuracy % | test accuracy % | test macro-F1 |")
        print("|---|---|---|---|---|---|---|")
        for name in ("SST-2", "SMS spam"):
            for b in ("random", "grouped by length"):
                rs = [r for r in rows if r["data"] == name and r["batches"] == b]
                if not rs:
                    continue
                mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
                each = lambda k: ", ".join(f"{r[k]:.2f}" for r in rs)  # noqa: E731
                print(f"| {name} | {b} | {mean('train_s'):.1f} ({each('train_s')}) | {mean('texts_per_s'):.1f} | "
                      f"{mean('val_accuracy'):.2f} | {mean('test_accuracy'):.2f} ({each('test_accuracy')}) | {mean('test_macro_f1'):.4f} |")
        if not a.no_predict and a.only in (None, "SMS spam"):
            print("\nprediction:", json.dumps(predict_timing(tmp / f"SMS-{a.seeds[0]}-True")))
            print("feature pass:", json.dumps(features_timing()))


if __name__ == "__main__":
    main()
