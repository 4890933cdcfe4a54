"""Shared fixtures: a private feature cache per test session, tiny image folders, a tiny checkpoint."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "tk-cache"))
    monkeypatch.setenv("CI", "1")  # no progress bars in test output


def make_folder(root: Path, n: int = 8, size: int = 20, seed: int = 0) -> Path:
    """Two colour classes, `n` noisy images each."""
    rng = np.random.default_rng(seed)
    for c, col in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from transferkit.backbones.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("ckpt") / "r20.safetensors"
    save_file(CifarResNet(20).state_dict(), str(p))
    return p


def tiny_args(ckpt: Path) -> list[str]:
    return ["--model", f"file:{ckpt}", "--arch", "cifar_resnet20", "--input-size", "16", "--batch-size", "4"]


needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (development data) is not on this machine")


# Tiny models on a small shared machine: one thread per process avoids OpenMP oversubscription, which
# made tiny training steps up to 100x slower when other work ran beside the tests.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the CLI subprocesses some tests start


# ----------------------------------------------------------------------------------------------- text

WORDS = "good great fine lovely superb bad awful poor boring dull the a movie film plot was is very not and it".split()


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d random BERT with a WordPiece tokenizer (letters as sub-words, so every lowercase
    word tokenizes), saved as a Hugging Face model folder (what `--model dir:PATH` reads)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "'"] + WORDS + letters + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(folder))
    return folder


def make_text_csv(path: Path, n: int = 20, seed: int = 0, sep: str = ",") -> Path:
    """Two separable classes of short reviews, with a header `text<sep>label`."""
    rng = np.random.default_rng(seed)
    pos, neg = WORDS[:5], WORDS[5:10]
    rows = ["text" + sep + "label"]
    for i in range(n):
        for lab, words in (("pos", pos), ("neg", neg)):
            w = " ".join(rng.choice(words, 3).tolist() + rng.choice(WORDS[10:], 2).tolist())
            rows.append(f"the movie was {w}{sep}{lab}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


def tiny_text_args(bert: Path) -> list[str]:
    return ["--model", f"dir:{bert}", "--batch-size", "8", "--max-length", "32", "--lp-epochs", "20", "--epochs", "2"]
