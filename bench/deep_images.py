"""16-bit and EXIF-rotated images: hymenoptera rewritten as a microscope or a phone would save it, then
the default linear probe on each copy against the original.

    .venv/bin/python bench/deep_images.py [TRANSFERKIT_SRC]     # about 3 minutes on 2 CPU cores

- `16-bit gray`: every photo as a 16-bit grayscale PNG (luma x 257, the full 16-bit range);
  the reference is the same photos as 8-bit grayscale PNGs.
- `EXIF-rotated`: every photo stored turned 90 degrees, with EXIF orientation 6 saying how to turn
  it back (what a phone writes); the reference is the original photos.

TRANSFERKIT_SRC (default: this checkout's src/) lets the same script run an older checkout, to show
what the decoding did before. Prints a Markdown table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HYM = ROOT.parent / "shared" / "data" / "hymenoptera"


def rewrite(dst: Path, how: str) -> None:
    for src in HYM.rglob("*.jpg"):
        out = dst / src.relative_to(HYM)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as im:
            im = im.convert("RGB")
            if how in ("gray8", "gray16"):
                luma = np.asarray(im.convert("L"), dtype=np.uint16)
                arr = luma * 257 if how == "gray16" else luma.astype(np.uint8)
                Image.fromarray(arr).save(out.with_suffix(".png"))
            elif how == "exif":
                turned = im.transpose(Image.Transpose.ROTATE_90)  # stored turned a quarter anticlockwise ...
                exif = turned.getexif()
                exif[0x0112] = 6  # ... and EXIF says: turn 90 degrees clockwise to show it
                turned.save(out, exif=exif, quality=95)
            else:
                im.save(out, quality=95)


def fit(data: Path, out: Path, src: str) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": src, "TRANSFERKIT_CACHE_DIR": str(out.parent / f"cache-{out.name}")}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "transferkit.cli", "fit", "--data", str(data), "--strategy", "linear_probe", "--out", str(out), "--quiet"],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    import json

    return json.loads((out / "metrics.json").read_text())["accuracy"], time.perf_counter() - t


def main() -> None:
    src = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "src")
    print(f"transferkit from {src}")
    lines = ["| data | val accuracy % | wall s |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, how in (("original JPEGs", "orig"), ("EXIF-rotated JPEGs", "exif"), ("8-bit gray PNG", "gray8"), ("16-bit gray PNG", "gray16")):
            d = Path(tmp) / how
            rewrite(d, how)
            acc, wall = fit(d, Path(tmp) / f"run-{how}", src)
            lines.append(f"| {label} | {100 * acc:.2f} | {wall:.1f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
