"""Temperature scaling, checked where it can be checked honestly: on a test split the temperature was
not fitted on. Every run is the default fit (calibrate=temperature); its metrics hold the validation
and test ECE / NLL before and after, so nothing is trained twice.

    .venv/bin/python bench/calibration.py            # about 15 minutes on 2 CPU cores

Data from ../shared/data (hymenoptera, SST-2) and scikit-learn's digits; prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

RUNS = [
    ("digits, lp_ft, 64 px, seed 0", dict(data="digits", strategy="lp_ft", input_size=64, test_fraction=0.2, seed=0)),
    ("digits, lp_ft, 64 px, seed 1", dict(data="digits", strategy="lp_ft", input_size=64, test_fraction=0.2, seed=1)),
    ("digits, lp_ft, 64 px, seed 2", dict(data="digits", strategy="lp_ft", input_size=64, test_fraction=0.2, seed=2)),
    ("hymenoptera, linear_probe", dict(data=str(DATA / "hymenoptera"), strategy="linear_probe", test_fraction=0.2)),
    ("SST-2, minilm_l6 linear_probe, 1,500 shots/class", dict(data=str(DATA / "text" / "sst2"), model="minilm_l6", strategy="linear_probe", shots=1500, max_length=64)),
]


def main() -> None:
    from transferkit import report
    from transferkit.config import RunConfig, replace
    from transferkit.fit import fit

    only = sys.argv[1:]
    lines = [
        "| run | accuracy val / test % | T | val ECE before -> after | test ECE before -> after | test NLL before -> after | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, kw) in enumerate(RUNS):
            if only and not any(o in name for o in only):
                continue
            t = time.perf_counter()
            r = fit(replace(RunConfig(), **kw), Path(tmp) / f"run{i}", console=report.console(quiet=True))
            m, ts = r.metrics, r.metrics["temperature_scaling"]
            if "temperature" not in ts:
                lines.append(f"| {name} | {100 * m['accuracy']:.2f} / {100 * m['test']['accuracy']:.2f} | skipped: {ts['skipped']} | | | | {time.perf_counter() - t:.0f} |")
            else:
                vb, va, tb, ta = ts["val_before"], ts["val_after"], ts["test_before"], ts["test_after"]
                lines.append(
                    f"| {name} | {100 * m['accuracy']:.2f} / {100 * m['test']['accuracy']:.2f} | {ts['temperature']:.3f} | "
                    f"{100 * vb['ece']:.1f} -> {100 * va['ece']:.1f} | {100 * tb['ece']:.1f} -> **{100 * ta['ece']:.1f}** | "
                    f"{tb['nll']:.3f} -> {ta['nll']:.3f} | {time.perf_counter() - t:.0f} |"
                )
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
