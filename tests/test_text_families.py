"""Text backbones beyond BERT: tiny random models of the families users bring (DistilBERT, DeBERTa-v2,
MPNet, ModernBERT, T5, GPT-2, Llama, RoBERTa), each with the tiny BERT's tokenizer. LoRA finds their
attention projections by itself, an encoder-decoder is used through its encoder, `last` pooling reads
the last real token, and RoBERTa-style position numbering bounds the token limit."""

import numpy as np
import pytest
import torch

from conftest import make_text_csv

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _config(family: str, vocab: int):
    import transformers as T

    return {
        "bert": lambda: T.BertConfig(vocab_size=vocab, **SMALL),
        "roberta": lambda: T.RobertaConfig(vocab_size=vocab, pad_token_id=0, max_position_embeddings=40, **SMALL),
        "distilbert": lambda: T.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        "deberta-v2": lambda: T.DebertaV2Config(vocab_size=vocab, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, **SMALL),
        "mpnet": lambda: T.MPNetConfig(vocab_size=vocab, **SMALL),
        "modernbert": lambda: T.ModernBertConfig(vocab_size=vocab, pad_token_id=0, **SMALL),
        "t5": lambda: T.T5Config(vocab_size=vocab, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16),
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2),
        "llama": lambda: T.LlamaConfig(vocab_size=vocab, num_key_value_heads=1, **SMALL),
    }[family]()


def make_family(tmp_path, tiny_bert, family: str):
    """A random `family` model saved beside a copy of the tiny BERT's tokenizer: a `dir:` folder."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path / family
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    AutoModel.from_config(_config(family, tok.vocab_size)).save_pretrained(str(folder))
    return folder


EXPECTED_TARGETS = {
    "bert": {"query", "value"},
    "distilbert": {"q_lin", "v_lin"},
    "deberta-v2": {"query_proj", "value_proj"},
    "mpnet": {"q", "v"},
    "modernbert": {"Wqkv"},
    "t5": {"q", "v"},
    "gpt2": {"c_attn"},
    "llama": {"q_proj", "v_proj"},
}


@pytest.mark.parametrize("family", list(EXPECTED_TARGETS))
def test_lora_finds_each_familys_attention_projections_and_merges_exactly(tmp_path, tiny_bert, family):
    from transferkit.config import RunConfig, replace
    from transferkit.lora import apply_lora, merge_lora
    from transferkit.model import create_model

    cfg = replace(RunConfig(), model=f"dir:{make_family(tmp_path, tiny_bert, family)}", strategy="lora", lora_r=2)
    model = create_model(cfg.model, 2).eval()
    x, _ = model.backbone.tokenize(["good film", "the plot was very bad"], 16)
    with torch.no_grad():
        plain = model(x)
    adapted = apply_lora(model.backbone, cfg.strategy)
    model.eval()  # the injected adapters' dropout starts in training mode
    assert {a.rsplit(".", 1)[-1] for a in adapted} == EXPECTED_TARGETS[family]
    assert len(adapted) == 2 * len(EXPECTED_TARGETS[family])  # in each of the 2 layers, nowhere else
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA's B starts at zero; give it weights so that the adapters change the output
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.5)
        adapted_out = model(x)
    assert (adapted_out - plain).abs().max() > 1e-3
    assert merge_lora(model.backbone) == len(adapted)
    with torch.no_grad():  # merged weights compute what base + adapter did (GPT-2's Conv1D is transposed)
        torch.testing.assert_close(model(x), adapted_out, atol=1e-5, rtol=1e-4)


def test_encoder_decoder_model_is_used_through_its_encoder(tmp_path, tiny_bert):
    from transferkit import TextClassifier
    from transferkit.backbones import create_backbone

    folder = make_family(tmp_path, tiny_bert, "t5")
    bb = create_backbone(f"dir:{folder}")
    assert bb.spec["encoder_only"] and not any("decoder" in n for n, _ in bb.named_parameters())
    p = make_text_csv(tmp_path / "r.csv")
    clf = TextClassifier(model=f"dir:{folder}", strategy="full", batch_size=8, max_length=32, epochs=1).fit(str(p))
    texts = ["good film", "the plot was awful"]
    clf.save(tmp_path / "run")
    loaded = TextClassifier.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)
    from transferkit.adapt import mlm
    from transferkit.errors import UserError

    with pytest.raises(UserError, match="encoder-decoder model: adapt continues masked-LM"):
        mlm(bb, ["good film"] * 4)


def test_last_pooling_reads_the_last_real_token(tmp_path, tiny_bert):
    from transferkit.backbones import create_backbone
    from transferkit.backbones.text import trim

    bb = create_backbone(f"dir:{make_family(tmp_path, tiny_bert, 'gpt2')}").eval()
    bb.pooling = "last"
    x, _ = bb.tokenize(["good film", "the movie was very very boring"], 32)
    n_short = int((x[0] >= 0).sum())
    with torch.no_grad():
        hidden = bb.model(input_ids=trim(x[:1])).last_hidden_state
        pooled = bb(x)
    torch.testing.assert_close(pooled[0], hidden[0, n_short - 1], atol=1e-5, rtol=1e-5)  # not a padding position
    with torch.no_grad():
        torch.testing.assert_close(bb(trim(x[:1])), pooled[:1], atol=1e-5, rtol=1e-5)  # alone or padded in a batch


def test_roberta_position_offset_bounds_the_token_limit(tmp_path, tiny_bert):
    """RoBERTa numbers positions from pad + 1: with pad 0, 40 position embeddings hold 39 tokens. With no limit
    from the tokenizer, a longer --max-length used to index past the table (a traceback)."""
    from transformers import AutoTokenizer

    from transferkit import TextClassifier

    folder = make_family(tmp_path, tiny_bert, "roberta")
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.model_max_length = int(1e30)  # what transformers says when a tokenizer has no limit
    tok.save_pretrained(str(folder))
    p = make_text_csv(tmp_path / "r.csv")
    rows = p.read_text().splitlines()
    p.write_text("\n".join(rows + [f"{' '.join(['good'] * 60)},pos"]) + "\n")
    clf = TextClassifier(model=f"dir:{folder}", strategy="full", batch_size=8, max_length=100, epochs=1).fit(str(p))
    assert clf.inputs_.max_length == 39 and clf.metrics_["truncated_texts"] >= 1


def test_unknown_family_without_targets_asks_for_them(tmp_path, tiny_bert):
    """A backbone with no known projection names is refused with the names it has, not guessed."""
    from transferkit.backbones import create_backbone
    from transferkit.config import StrategyConfig
    from transferkit.errors import UserError
    from transferkit.lora import apply_lora

    bb = create_backbone("small_convnet", pretrained=False)
    with pytest.raises(UserError, match="needs --lora-targets"):
        apply_lora(bb, StrategyConfig(name="lora"))


def test_last_pooling_exports_with_a_dynamic_batch(tmp_path, tiny_bert):
    """Indexing the last token with arange(len(batch)) froze the traced batch size into the ONNX
    graph; the export's own check (another batch size) refused it."""
    pytest.importorskip("onnxruntime")
    from transferkit import TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    folder = make_family(tmp_path, tiny_bert, "gpt2")
    clf = TextClassifier(model=f"dir:{folder}", strategy="linear_probe", pooling="last", batch_size=8, max_length=32, lp_epochs=2).fit(str(p))
    other = make_text_csv(tmp_path / "other.csv", seed=1)  # other texts than the fit's (its training texts would be left out)
    info = clf.export(tmp_path / "export", data=str(other))
    assert info["check"]["ok"] and info["data_check"]["same_class"] == info["data_check"]["n"] > 30, info["data_check"]
