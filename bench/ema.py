"""--ema: fine-tuning that validates, selects and keeps an exponential moving average of the weights
(timm's ModelEmaV3 with warmup), against the same runs without it. Same seeds, same data, one run at
a time.

    .venv/bin/python bench/ema.py [FILTER ...]      # about 55 minutes on 2 CPU cores

Hymenoptera from ../shared/data (its given val split), scikit-learn's digits with a held-out test
split (--test-fraction 0.2); prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYM = str(ROOT.parent / "shared" / "data" / "hymenoptera")

RUNS = []
for seed in (0, 1, 2):
    for ema in (0.0, 0.99):
        RUNS.append((f"hymenoptera lp_ft (default), seed {seed}", ema, dict(data=HYM, seed=seed)))
for seed in (0, 1, 2):
    for ema in (0.0, 0.99):
        RUNS.append((f"digits lp_ft 64 px, seed {seed}", ema, dict(data="digits", input_size=64, test_fraction=0.2, seed=seed)))
for seed in (0, 1, 2):
    for ema in (0.0, 0.99):
        RUNS.append((f"hymenoptera full, seed {seed}", ema, dict(data=HYM, strategy="full", seed=seed)))


def main() -> None:
    from transferkit import report
    from transferkit.config import RunConfig, replace
    from transferkit.fit import fit

    only = sys.argv[1:]
    lines = ["| run | ema | val acc % | test acc % | best epoch | fine-tuning epochs | wall s |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, ema, kw) in enumerate(RUNS):
            if only and not any(o in name for o in only):
                continue
            t = time.perf_counter()
            r = fit(replace(RunConfig(), ema=ema, **kw), Path(tmp) / f"run{i}", console=report.console(quiet=True))
            m = r.metrics
            ft = sum(1 for h in r.history if "finetune" in str(h["phase"]) or h["phase"] == "finetune")
            test = f"{100 * m['test']['accuracy']:.2f}" if "test" in m else "-"
            lines.append(f"| {name} | {ema or 'off'} | {100 * m['accuracy']:.2f} | {test} | {m['best_epoch']} | {ft} | {time.perf_counter() - t:.0f} |")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
