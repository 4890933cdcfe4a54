"""Evaluating a trained model on labelled data, outside of `fit`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import RunConfig
from .data import ImageSet, is_builtin, load_image_data, _read_csv, _read_folder, split_dirs
from .errors import UserError
from .metrics import classification_metrics


def eval_set(spec: str, classes: list[str], config: RunConfig | None = None) -> tuple[ImageSet, str]:
    """The labelled images to evaluate on: a data root's test/ split, else its val/ split, else every
    image of a class folder or CSV; `digits` gives the validation split the run was trained with."""
    cfg = config or RunConfig()
    p = Path(spec)
    if is_builtin(spec):
        s, where = load_image_data(spec, val_fraction=cfg.data.val_fraction, seed=cfg.train.seed).val, f"{spec} (validation split)"
    elif not p.exists():
        raise UserError(f"data not found: {spec}")
    elif p.is_file():
        s = _read_csv(p, cfg.data.group_column, check=False, encoding=cfg.data.encoding, label_column=cfg.data.label_column, group_optional=True,
                      delimiter=cfg.data.delimiter)
        where = str(p)  # the run's groups, where this CSV has its --group-column
    else:
        dirs = split_dirs(p, need_train=False)  # a test/ or val/ without train/ too
        sub = dirs.get("test") or dirs.get("val") or p
        s, where = _read_folder(sub, classes), str(sub)  # labelled data to score: one image of a class is enough
    unknown = sorted(set(s.classes) - set(classes))
    if unknown:
        raise UserError(f"{where} has classes the model does not know: {', '.join(unknown)} (model classes: {', '.join(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[s.classes[y]] for y in s.labels], dtype=int)
    return ImageSet(s.sources, labels, list(classes), s.groups), where


def text_eval_set(spec: str, classes: list[str], cfg: RunConfig):
    """Labelled texts to evaluate on: a folder's test file, else its val/dev file; or every row of a file."""
    from .text_data import TextSet, read_table

    p = Path(spec)
    if not p.exists():
        raise UserError(f"data not found: {spec}")
    if p.is_dir():
        f = _text_eval_file(p)
        if f is None:
            from .data import image_files

            if next(iter(image_files(p)), None) is not None:  # a text run given an image folder
                raise UserError(f"{p} holds images, and this run is a text model: evaluate it on labelled texts (a CSV/TSV, or a folder with "
                                "test/val/dev files of them)")
            raise UserError(f"{p}: no test, val or dev file (.tsv / .csv) to evaluate on")
    else:
        f = p
    d = cfg.data
    texts, labels, rows, groups = read_table(f, delimiter=d.delimiter, encoding=d.encoding, text_column=d.text_column, label_column=d.label_column,
                                             group_column=d.group_column, group_optional=True, classes=classes)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise UserError(f"{f} has classes the model does not know: {', '.join(unknown[:10])} (model classes: {', '.join(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    groups = np.array(groups) if groups is not None else None
    return TextSet(texts, np.array([index[x] for x in labels], dtype=int), list(classes), rows, groups), str(f)


def _text_eval_file(p: Path) -> Path | None:
    """A text folder's file to score: its test file, else its val or dev file; None without one."""
    from .text_data import _find

    return next((x for x in (_find(p, "test"), _find(p, "val"), _find(p, "dev")) if x is not None), None)


def same_data(spec: str, trained_on: str | None) -> bool:
    """Whether a data spec names the data a run was fitted on: the same string (`digits`), or the same
    existing path however written."""
    if trained_on is None:
        return False
    if spec == trained_on:
        return True
    a, b = Path(spec), Path(trained_on)
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _split_moved(clf, splits) -> bool:
    """Whether the training or validation split drawn again from the run's data misses examples, by
    content, of the one the run kept fingerprints of (unknown for a run that kept none: taken as the
    same). A subset, not equality: a run with --skip-bad-images kept no print of an image it left out."""
    from .data import fingerprints

    text = clf.inputs_.modality == "text"
    train, val = getattr(clf, "train_fingerprints_", None), getattr(clf, "val_fingerprints_", None)
    if not train:
        return False
    if not set(train) <= set(fingerprints(splits.train.sources, text)):
        return True
    return bool(val) and not set(val) <= set(fingerprints(splits.val.sources, text))


def _has_eval_split(p: Path, modality: str) -> bool:
    """Whether data at `p` has a split of its own to score (images: test/ or val/; texts: a folder's
    test, val or dev file), rather than every example, the training ones included."""
    if not p.is_dir():
        return False
    if modality == "text":
        return _text_eval_file(p) is not None
    dirs = split_dirs(p, need_train=False)
    return "test" in dirs or "val" in dirs


def labelled_set(clf, spec: str):
    """(examples, description) a fitted classifier is scored on for `spec`: on the data the run was
    fitted on, the run's held-out test split (--test-fraction), or its validation split when the data
    has no split of its own (every example would include the training ones); else `text_eval_set` /
    `eval_set`."""
    cfg = clf.config_
    changed = ""
    # an adapted run (AdaBN, its head kept from the run it adapted) drew no split of the data its config
    # names, which it never trained on: other data (it was said to have "changed since the run was fitted")
    if not getattr(clf, "_adapted", False) and same_data(spec, cfg.data.path) and (cfg.data.test_fraction or not _has_eval_split(Path(spec), clf.inputs_.modality)):
        from .inputs import load_splits

        splits = load_splits(cfg)  # drawn again with the run's seed
        if _split_moved(clf, splits):
            # the data at this path changed since the fit (shuffled, grown): the split drawn again is not the
            # run's, and a shuffled file's "held-out test split" was 90% right where the real one was 70%
            changed = (f" (the data here changed since the run was fitted, so its {'test' if cfg.data.test_fraction else 'validation'} split "
                       "cannot be drawn again: scored as other data)")
        elif cfg.data.test_fraction:  # the examples it never trained or selected on
            return splits.test, f"{spec} (the run's held-out test split, --test-fraction {cfg.data.test_fraction:g}, seed {cfg.train.seed})"
        else:
            return splits.val, (f"{spec} (the run's validation split, seed {cfg.train.seed}: the rest trained it; the best epoch was chosen on it, "
                                "so a little optimistic: fit with --test-fraction 0.2 for an estimate on examples it never saw)")
    text = clf.inputs_.modality == "text"
    s, where = text_eval_set(spec, clf.class_names_, cfg) if text else eval_set(spec, clf.class_names_, cfg)
    where += changed
    seen = getattr(clf, "train_fingerprints_", None)
    if seen is None:  # a run from before runs kept them: said, as the examples it trained on cannot be told apart
        where = (f"{where} (this run keeps no fingerprints of its training examples, as runs made by an older transferkit do not: "
                 "any of them here are scored too)")
    elif seen:  # the run's training examples under another path (a copy, a CRLF re-export) are left out, not scored
        from .data import fingerprints

        prints = fingerprints(s.sources, text)
        keep = [i for i, f in enumerate(prints) if f not in seen]
        unit = clf.inputs_.unit
        if len(keep) < len(s):
            if not keep:
                raise UserError(f"{where}: all {len(s)} {unit} are ones the run trained on (the same content as its training split): "
                                "their score would say nothing about new data; evaluate on data it did not train on")
            where = f"{where} ({len(s) - len(keep)} of its {len(s)} {unit} left out: the run trained on them)"
            s = s.subset(keep)
        chose = sum(prints[i] in getattr(clf, "val_fingerprints_", set()) for i in keep)
        if chose:  # the validation split picked the best epoch: its score is a little optimistic
            where = f"{where} ({chose} of the {len(keep)} scored are the run's validation split, which chose its best epoch: a little optimistic)"
    return s, where


def evaluate_model(clf, spec: str, *, mistakes_csv: str | Path | None = None, onnx_session=None, skip_bad_images: bool = False,
                   source_name=None) -> dict:
    """Metrics of a fitted classifier (api.ImageClassifier / TextClassifier) on labelled data; every
    wrong example, most confidently wrong first, written to `mistakes_csv` when given. With
    `onnx_session` (export.load_export) the run's ONNX export computes the probabilities.
    `source_name(source)`: what the mistakes call an example (evaluate(X, y)'s images in memory: X[i])."""
    import contextlib

    from .mistakes import summary, to_csv, top_mistakes
    from .rundir import refuse_run_file
    from .trainer import predict_proba

    if mistakes_csv is not None:
        refuse_run_file(mistakes_csv, "mistakes_csv")
    s, where = labelled_set(clf, spec)
    cut_before = getattr(clf.inputs_, "truncated", 0)
    x, s, bad = clf.inputs_.encode(s, skip_bad=skip_bad_images or None)  # None: as the run was fitted
    cut = getattr(clf.inputs_, "truncated", 0) - cut_before  # texts longer than the run's max_length (fit says its own)
    if not len(s):
        raise UserError(f"{where}: no readable examples to score (the {len(bad)} left to score cannot be read: {'; '.join(bad[:3])})")
    if onnx_session is not None:
        from .export import onnx_predict_proba

        proba = onnx_predict_proba(onnx_session, clf, x)
    else:
        proba = predict_proba(clf.model_, x, clf.inputs_.eval_transform(), 64, contextlib.nullcontext).numpy()
    m = classification_metrics(s.labels, proba, clf.class_names_)
    m["data"] = where + (" (ONNX export, onnxruntime)" if onnx_session is not None else "")
    wrong = top_mistakes(s.labels, proba, clf.class_names_, s.sources, getattr(s, "rows", None), name=source_name)
    m["mistakes"] = summary(wrong)
    if getattr(s, "groups", None) is not None:  # the run's --group-column: metrics per group and the worst one
        from .metrics import group_metrics

        m["groups"] = group_metrics(s.labels, proba, s.groups, clf.class_names_)
    if bad:
        m["skipped"] = bad
    if cut:
        m["texts_cut"] = {"n": cut, "max_length": clf.inputs_.max_length}
    if mistakes_csv is not None:
        from .rundir import atomic_write_bytes

        atomic_write_bytes(Path(mistakes_csv), to_csv(wrong).encode())
    return m
