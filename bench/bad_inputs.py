"""Every bad or hostile input of issue 10 (and the text ones of issue 6) through the real CLI: the exit
code and the message the user sees, as a Markdown table.

    .venv/bin/python bench/bad_inputs.py            # about a minute; writes bench/results/bad_inputs.md

Uses a tiny random CIFAR ResNet checkpoint and a tiny random BERT, built here, so nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from conftest import make_folder, make_text_csv, make_tiny_bert
    from transferkit.backbones.cifar_resnet import CifarResNet

    tmp = Path(tempfile.mkdtemp(prefix="tk-bad-"))
    env = {**os.environ, "TRANSFERKIT_CACHE_DIR": str(tmp / "cache"), "CI": "1", "OMP_NUM_THREADS": "1"}
    torch.manual_seed(0)
    save_file(CifarResNet(20).state_dict(), str(tmp / "r20.safetensors"))
    img = ["--model", f"file:{tmp / 'r20.safetensors'}", "--arch", "cifar_resnet20", "--input-size", "16", "--batch-size", "4",
           "--strategy", "linear_probe", "--lp-epochs", "2"]
    bert = make_tiny_bert(tmp / "bert")
    txt = ["--model", f"dir:{bert}", "--strategy", "linear_probe", "--lp-epochs", "2", "--max-length", "32"]
    cases = []

    def case(name, args):
        cases.append((name, args))

    # --- images
    d = make_folder(tmp / "rand", n=4)
    (d / "red" / "random-bytes.jpg").write_bytes(os.urandom(4096))
    case("random bytes with an image extension", ["--data", d, *img])
    d = make_folder(tmp / "trunc", n=4)
    jpg = d / "red" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[:300])
    case("a truncated JPEG", ["--data", d, *img])
    d = make_folder(tmp / "bomb", n=4)
    Image.new("1", (30_000, 30_000)).save(d / "red" / "bomb.png")
    case("a 30,000 x 30,000 PNG (100 KB on disk)", ["--data", d, *img])
    case("the same, with --skip-bad-images", ["--data", d, *img, "--skip-bad-images"])
    d = make_folder(tmp / "csvimg", n=4)
    files = sorted(d.rglob("*.png"))
    rows = "path,label\n" + "".join(f'{f},"{lab.replace(chr(34), chr(34) * 2)}"\n' for f, lab in zip(files, ["../../evil", 'a, "q"\nb', "ünï ✓", "../../evil"] * 4))
    (tmp / "latin1.csv").write_bytes(("path,label\n" + "".join(f"{f},caf\xe9\n" for f in files)).encode("latin-1"))
    case("an image CSV in Latin-1", ["--data", tmp / "latin1.csv", *img])
    (tmp / "utf16.csv").write_bytes(rows.encode("utf-16"))
    case("an image CSV in UTF-16 with labels `../../evil`, `a, \"q\"\\nb`, `ünï ✓`", ["--data", tmp / "utf16.csv", *img])
    # --- text
    t = make_text_csv(tmp / "ok.csv")
    (tmp / "latin1.tsv").write_bytes("text\tlabel\ncafé\tpos\nnaïve\tneg\n".encode("latin-1"))
    case("a text TSV in Latin-1", ["--data", tmp / "latin1.tsv", *txt])
    case("the same with --encoding latin-1 (too few rows to train: the next message)", ["--data", tmp / "latin1.tsv", *txt, "--encoding", "latin-1"])
    (tmp / "empty-text.csv").write_text("text,label\ngood film,pos\n,neg\n")
    case("an empty text", ["--data", tmp / "empty-text.csv", *txt])
    big = t.read_text() + ("good " * 200_000).strip() + ",pos\n"
    (tmp / "big.csv").write_text(big)
    case("a 1 MB text (valid: cut to --max-length and counted)", ["--data", tmp / "big.csv", *txt])
    (tmp / "one-col.csv").write_text("text\ngood\nbad\n")
    case("a text file with no label column", ["--data", tmp / "one-col.csv", *txt])
    (tmp / "one-class.csv").write_text("text,label\ngood,pos\nfine,pos\n")
    case("a label column with one class", ["--data", tmp / "one-class.csv", *txt])
    case("a text column that does not exist", ["--data", t, *txt, "--text-column", "review"])
    nt = tmp / "no-tokenizer"
    nt.mkdir()
    (nt / "config.json").write_text((bert / "config.json").read_text())
    case("a model folder without a tokenizer", ["--data", t, "--model", f"dir:{nt}"])
    case("a LoRA target that matches no module", ["--data", t, *txt, "--strategy", "lora", "--lora-targets", "qkv_proj"])
    case("an image model on text data", ["--data", t, "--model", "efficientnet_lite0"])
    case("hf:NAME offline", ["--data", t, "--model", "hf:bert-base-uncased"])

    lines = ["| input | exit | what the user sees (stderr, first lines) |", "|---|---|---|"]
    for i, (name, args) in enumerate(cases):
        out = tmp / f"run{i}"
        r = subprocess.run([sys.executable, "-m", "transferkit.cli", "fit", *map(str, args), "--out", str(out), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=600)
        msg = " / ".join(ln.strip() for ln in r.stderr.strip().splitlines() if ln.strip() and "Loading weights" not in ln)[:400] or "(nothing: the run completed)"
        complete = (out / "manifest.json").exists()
        assert "Traceback" not in r.stderr, r.stderr
        lines.append(f"| {name} | {r.returncode}{' (run complete)' if complete else ''} | {msg.replace('|', '/').replace(str(tmp), '…')} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "bad_inputs.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
