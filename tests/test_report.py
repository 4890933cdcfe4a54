"""Calibration (ECE) against a hand computation, and report.html: self-contained, complete, and
rendered by a real browser (headless Chromium) with its figures."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import make_folder, tiny_args
from transferkit.cli import main
from transferkit.metrics import calibration


def test_ece_equals_a_hand_computation():
    # 4 examples, 2 classes. Confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (right).
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.45, 0.55]])
    # 5 bins of width 0.2: (0.4, 0.6] holds 0.6 and 0.55 (acc 1, conf 0.575); (0.6, 0.8] holds 0.8 (acc 0);
    # (0.8, 1.0] holds 0.9 (acc 1). ECE = 2/4 * |1 - 0.575| + 1/4 * |0 - 0.8| + 1/4 * |1 - 0.9| = 0.4375
    cal = calibration(y, p, n_bins=5)
    assert cal["ece"] == pytest.approx(0.4375)
    assert [b["count"] for b in cal["bins"]] == [2, 1, 1]
    assert calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))["ece"] == 0.0  # sure and right


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("rep")
    d = make_folder(tmp / "d", n=5)
    out = tmp / "run"
    assert main(["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "3", "--out", str(out)]) == 0
    return out


def test_report_is_self_contained_and_complete(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched from anywhere
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # curves, confusion, reliability, lr
    for needle in ("Results (validation split)", "raw-pixel logistic regression", "Largest recall gaps", "ECE", "Resolved configuration", "red", "blue"):
        assert needle in page, needle
    import json

    verdict = json.loads((run_dir / "metrics.json").read_text())["verdict"]
    assert verdict.split(":")[0] in page


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium (Debian package chromium) is not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The page loads with no network and a screenshot shows the figures (non-blank, with colour)."""
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--window-size=1100,2400", f"--screenshot={shot}", f"file://{run_dir / 'report.html'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    # the figures: plenty of saturated pixels (matplotlib's blues and reds), which text alone lacks
    sat = (img.max(2) - img.min(2)) > 80
    assert sat.mean() > 0.01, f"only {sat.mean():.4f} of the page is coloured: figures missing?"
