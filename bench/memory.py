"""Peak memory of `transferkit fit` as the dataset grows (issue 10).

    .venv/bin/python bench/memory.py                     # hymenoptera (397 images), then repeated to 2,000 and 20,000
    .venv/bin/python bench/memory.py --sizes 0 20000 --set --strategy full --epochs 1

Runs the CLI in a subprocess on ../shared/data/hymenoptera and on CSVs that list its images again and
again (a CSV of `path,label` rows), samples /proc/PID/status every 0.1 s and reports the peaks of
RssAnon (the heap: Python objects, tensors, the model) and RssFile (pages of mapped files, mostly the
memory-mapped decoded-image cache; the kernel can drop them under pressure), with the cache file's
size. The promise: RssAnon does not grow with the number of images beyond the cache file.
Accuracy on the repeated CSVs means nothing (the same images land in train and validation).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYM = ROOT.parent / "shared" / "data" / "hymenoptera"
DEFAULT_SET = ["--strategy", "linear_probe", "--input-size", "112"]


def status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024  # MiB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def write_csv(path: Path, n: int) -> Path:
    files = sorted(p for p in HYM.rglob("*.jpg"))
    rows = ["path,label"] + [f"{f},{f.parent.name}" for f in (files * (n // len(files) + 1))[:n]]
    path.write_text("\n".join(rows) + "\n")
    return path


def measure(data: str, extra: list[str], cache: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "transferkit.cli", "fit", "--data", data, "--out", str(Path(out) / "run"), "--quiet", *extra]
        env = {**os.environ, "TRANSFERKIT_CACHE_DIR": str(cache)}
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak: dict[str, int] = {}
        while p.poll() is None:
            for k, v in status(p.pid).items():
                peak[k] = max(peak.get(k, 0), v)
            time.sleep(0.1)
        err = p.stderr.read()
        if p.returncode != 0:
            raise SystemExit(f"fit failed ({p.returncode}): {err[-2000:]}")
    images = sum(f.stat().st_size for f in (cache / "images").glob("*.u8")) // (1 << 20) if (cache / "images").is_dir() else 0
    return {"wall_s": round(time.perf_counter() - t0, 1), **peak, "image_cache_mib": images}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[0, 2000, 20000], help="0 = the hymenoptera folder itself")
    ap.add_argument("--set", nargs=argparse.REMAINDER, default=DEFAULT_SET, help="fit flags (default: %(default)s)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tk-bench-mem-") as tmp:
        for n in args.sizes:
            data = str(HYM) if n == 0 else str(write_csv(Path(tmp) / f"hym-{n}.csv", n))
            cache = Path(tmp) / f"cache-{n}"  # a cold cache per size, so its file holds exactly this run's images
            r = measure(data, args.set, cache)
            r["images"] = 397 if n == 0 else n
            print(r, flush=True)
            rows.append(r)
    print(f"\nfit flags: {' '.join(args.set)}\n")
    print("| images | peak RssAnon MiB (heap) | peak RssFile MiB (mapped files) | peak VmHWM MiB | decoded-image cache file MiB | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r.get('RssAnon', '?')} | {r.get('RssFile', '?')} | {r.get('VmHWM', '?')} | {r['image_cache_mib']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
