"""The Python API on examples in memory, as a scikit-learn user holds them: a MiniLM linear probe
fitted on 1,000 SST-2 training sentences (a seeded sample) with fit(X, y), scored on GLUE dev (872
sentences) with evaluate(X, y), and the same sentences scored from the TSV by `transferkit evaluate`:
the two must agree exactly (accuracy, macro-F1, AUROC, confusion matrix).

    .venv/bin/python bench/api_evaluate.py        # ../shared/data (development data) needed
"""

import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text" / "sst2"


def read(name: str) -> tuple[list[str], list[int]]:
    with open(SST2 / name, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def main() -> int:
    from transferkit import TextClassifier

    tx, ty = read("train.tsv")
    idx = random.Random(0).sample(range(len(tx)), 1000)
    X, y = [tx[i] for i in idx], [ty[i] for i in idx]
    Xt, yt = read("test.tsv")  # GLUE dev, with labels
    t = time.perf_counter()
    clf = TextClassifier(model="minilm_l6", strategy="linear_probe").fit(X, y)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    m = clf.evaluate(Xt, yt)
    eval_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        clf.save(Path(tmp) / "run")
        out = subprocess.run([sys.executable, "-m", "transferkit.cli", "evaluate", str(Path(tmp) / "run"), "--data", str(SST2 / "test.tsv"), "--json"],
                             capture_output=True, text=True, check=True)
    cli = json.loads(out.stdout)
    print(f"fit(X, y) on 1,000 sentences: {fit_s:.1f} s; evaluate(X, y) on {m['n']}: {eval_s:.1f} s")
    print(f"evaluate(X, y): accuracy {100 * m['accuracy']:.2f}%, macro-F1 {m['macro_f1']:.4f}, AUROC {m['auroc']:.4f}, {m['mistakes']['count']} mistakes; {m['data']}")
    print(f"transferkit evaluate test.tsv: accuracy {100 * cli['accuracy']:.2f}%, macro-F1 {cli['macro_f1']:.4f}, AUROC {cli['auroc']:.4f}")
    same = (m["accuracy"], m["macro_f1"], m["confusion_matrix"]) == (cli["accuracy"], cli["macro_f1"], cli["confusion_matrix"])
    print(f"score(X, y): {100 * clf.score(Xt, yt):.2f}%; API and command line agree: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
