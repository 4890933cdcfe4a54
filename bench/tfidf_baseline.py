"""The TF-IDF + logistic regression baseline alone, on the splits bench/text.py uses, in seconds:

    .venv/bin/python bench/tfidf_baseline.py

SST-2 (3,000 training sentences, stratified, seed 0; scored on test.tsv) and SMS spam (80/20,
seed 0; scored on the validation split). It prints what `fit` reports as its classical baseline,
so a change to transferkit.baselines can be checked against bench/results/text.md without
rerunning the transfer fits (hours on a CPU).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from text import TEXT, make_sst2  # noqa: E402

from transferkit.baselines import tfidf_logreg  # noqa: E402
from transferkit.metrics import classification_metrics  # noqa: E402
from transferkit.text_data import load_text_data  # noqa: E402


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    for name, spec in (("SST-2, 3,000 sentences (test.tsv)", make_sst2(tmp / "sst2", 3000)),
                       ("SMS spam, 80/20 (validation split)", str(TEXT / "sms_spam" / "SMSSpamCollection"))):
        s = load_text_data(spec, val_fraction=0.2, seed=0)
        ev = s.test if s.test is not None else s.val
        t = time.perf_counter()
        p = tfidf_logreg(s.train.sources, s.train.labels, ev.sources, seed=0)
        m = classification_metrics(ev.labels, p, s.classes)
        print(f"{name}: {len(s.train)} training, {len(ev)} scored: accuracy {100 * m['accuracy']:.2f}%, "
              f"macro-F1 {m['macro_f1']:.4f}, AUROC {m['auroc']:.4f}, {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
