"""What differs between images and text, in one place: loading, encoding to tensors, transforms, the
classical baseline and how a saved model describes its input. `fit`, `search`, `rank`, `evaluate` and
`predict` take an `Inputs` from `inputs_for(...)` and otherwise run the same code for both.

Encoded inputs are tensors that index and slice like any other: images as uint8 (N, 3, S, S) decoded
once, texts as int64 (N, L) token ids padded with -1 (the backbone derives the attention mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones import Preprocess
from .errors import UserError

TEXT_MODELS = ("minilm_l6",)


def modality_of(model_name: str) -> str:
    """'text' for text backbones (minilm_l6, hf:, dir:, random: of those), else 'image'."""
    name = model_name[len("random:") :] if model_name.startswith("random:") else model_name
    if name.startswith("run:"):
        from .backbones.run import run_meta

        return run_meta(name[len("run:") :]).get("modality", "image")
    return "text" if name in TEXT_MODELS or name.startswith(("hf:", "dir:")) else "image"


@dataclass
class Encoded:
    x: torch.Tensor
    notes: list[str] = field(default_factory=list)


class ImageInputs:
    modality = "image"
    unit = "images"

    def __init__(self, cfg, backbone):
        pre = backbone.preprocess
        if cfg.data.input_size:
            pre = Preprocess(cfg.data.input_size, pre.mean, pre.std, pre.crop_pct, pre.interpolation)
        self.pre = pre
        self.cfg = cfg
        self.size = pre.input_size  # the feature-cache key's size

    @staticmethod
    def load(cfg, seed: int):
        from .data import load_image_data

        if cfg.data.group_column and not str(cfg.data.path).lower().endswith(".csv"):
            raise UserError(f"--group-column needs CSV data (path,label,{cfg.data.group_column}); {cfg.data.path} is not a CSV")
        if cfg.data.text_column is not None:  # was ignored in silence
            raise UserError(f"--text-column {cfg.data.text_column} is for text models; {cfg.model.name} is an image model (its CSV's path column is found by name)")
        if cfg.data.delimiter is not None and not str(cfg.data.path).lower().endswith(".csv"):
            raise UserError(f"--delimiter reads a CSV of path,label rows; {cfg.data.path} is not a CSV")
        return load_image_data(cfg.data.path, val_fraction=cfg.data.val_fraction, seed=seed, group_column=cfg.data.group_column, encoding=cfg.data.encoding,
                               label_column=cfg.data.label_column, delimiter=cfg.data.delimiter)

    def encode(self, s, progress=None, skip_bad: bool | None = None):
        """(tensor, kept set, problems) for one split; unreadable images fail it, or are left out when
        `skip_bad` (default: the run's --skip-bad-images) says so."""
        from .data import decode_images

        skip = self.cfg.data.skip_bad_images if skip_bad is None else skip_bad
        return decode_images(s, self.pre.resize_size, self.pre.interpolation, skip_bad=skip, progress=progress)

    def train_transform(self, flip: bool):
        from .transforms import augment, center_crop, normalize

        mean, std, size, scale = self.pre.mean, self.pre.std, self.pre.input_size, (self.cfg.data.crop_scale_min, 1.0)

        def tf(x, g):
            if self.cfg.data.augment:
                return normalize(augment(x, size, scale=scale, flip=flip, generator=g), mean, std)
            return normalize(center_crop(x, size), mean, std)

        return tf

    def eval_transform(self):
        from .transforms import center_crop, normalize

        pre = self.pre
        return lambda x: normalize(center_crop(x, pre.input_size), pre.mean, pre.std)

    def baseline(self, train_set, train_x, eval_set, eval_x, seed: int) -> tuple[np.ndarray, str]:
        """The classical baseline's probabilities on `eval_set`: logistic regression on raw pixels."""
        from .baselines import raw_pixel_logreg

        return raw_pixel_logreg(train_x, train_set.labels, eval_x, seed=seed), "raw-pixel logistic regression"

    def describe(self, flip: bool) -> str:
        pre, d = self.pre, self.cfg.data
        return (
            f"input: {pre.input_size}px (resize {pre.resize_size}), mean {tuple(round(m, 3) for m in pre.mean)}, std {tuple(round(s, 3) for s in pre.std)}; "
            + ("augment: none (the probe trains on each image's cached features)" if self.cfg.strategy.name == "linear_probe" else
               f"augment: {'random resized crop' + (' + flip' if flip else '') if d.augment else 'off'}")
        )

    def meta(self) -> dict:
        return {"preprocess": self.pre.to_dict()}

    memory_format = torch.channels_last


class TextInputs:
    modality = "text"
    unit = "texts"

    def __init__(self, cfg, backbone):
        self.cfg = cfg
        self.backbone = backbone
        limit = backbone.preprocess.input_size  # position embeddings
        self.max_length = min(cfg.data.max_length, limit)
        self.size = self.max_length
        self.truncated = 0

    @staticmethod
    def load(cfg, seed: int):
        from .text_data import load_text_data

        d = cfg.data
        return load_text_data(d.path, val_fraction=d.val_fraction, seed=seed, text_column=d.text_column, label_column=d.label_column,
                              delimiter=d.delimiter, encoding=d.encoding, group_column=d.group_column)

    def encode(self, s, progress=None, skip_bad: bool | None = None):
        x, truncated = self.backbone.tokenize(list(s.sources), self.max_length)
        self.truncated += truncated
        if progress is not None:
            progress(len(s))
        return x, s, []

    def train_transform(self, flip: bool):
        from .backbones.text import trim

        return lambda x, g: trim(x)

    def eval_transform(self):
        from .backbones.text import trim

        return trim

    def baseline(self, train_set, train_x, eval_set, eval_x, seed: int) -> tuple[np.ndarray, str]:
        """The classical baseline's probabilities on `eval_set`: TF-IDF + logistic regression on the raw texts."""
        from .baselines import tfidf_logreg

        return tfidf_logreg(train_set.sources, train_set.labels, eval_set.sources, seed=seed), "TF-IDF logistic regression"

    def describe(self, flip: bool) -> str:
        return (
            f"input: text, up to {self.max_length} tokens"
            + (f" (the model's limit; --max-length {self.cfg.data.max_length} asked for more)" if self.cfg.data.max_length > self.max_length else "")
            + f" ({self.truncated} text(s) cut), dynamic padding per batch; "
            f"pooling: {self.backbone.pooling}" + self._pooling_note()
        )

    def _pooling_note(self) -> str:
        """The model folder's own pooling (sentence-transformers' 1_Pooling), where the run pools otherwise."""
        own = getattr(self.backbone, "folder_pooling", None)
        if own is None or own == self.backbone.pooling:
            return ""
        follow = f"--pooling {own} to follow it" if own in ("mean", "cls", "last") else "transferkit pools by mean, cls or last only"
        return f" (the model folder's sentence-transformers pooling is {own}: {follow})"

    def meta(self) -> dict:
        return {"max_length": self.max_length, "pooling": self.backbone.pooling}

    memory_format = torch.preserve_format


def inputs_for(cfg, backbone):
    kind = getattr(backbone, "modality", "image")
    if kind == "text":
        return TextInputs(cfg, backbone)
    return ImageInputs(cfg, backbone)


def refuse_image_data(path: str, model: str) -> None:
    """A text model given image data (`digits`, or a folder without a train file that holds class
    folders or images): a message saying which kind of model reads it."""
    from pathlib import Path

    from .data import image_files
    from .text_data import _find

    p = Path(path)
    if path.split(":")[0] == "digits" or (p.is_dir() and _find(p, "train") is None and (any(c.is_dir() for c in p.iterdir()) or bool(image_files(p)))):
        raise UserError(f"{path} looks like image data, and {model} is a text model; use an image model")


def refuse_text_data(path: str, model: str, via: str = "") -> None:
    """An image model given text data (a CSV/TSV of texts, or a folder with a train file): a message
    saying which kind of model reads it. `via`: how a pipeline stage came to the model."""
    from .text_data import is_text_spec

    if is_text_spec(path):
        raise UserError(f"{path} looks like text data, and {model} is an image model{via}; "
                        "use a text model (minilm_l6, hf:NAME, dir:PATH, or run: of a text run)")


def load_splits(cfg, seed: int | None = None):
    """The data of `cfg` as the model's modality reads it, with `cfg.data.shots` applied to train."""
    seed = cfg.train.seed if seed is None else seed
    cls = TextInputs if modality_of(cfg.model.name) == "text" else ImageInputs
    if cls is ImageInputs and modality_of(cfg.model.name) == "image" and cfg.model.name != "auto":
        try:
            refuse_text_data(cfg.data.path, cfg.model.name)
        except UserError:
            from .ranking import check_model_name

            check_model_name(cfg.model.name, cfg.model.arch)  # a typo (minilm-l6) is named as one, not as "an image model"
            raise
    if cls is TextInputs:
        refuse_image_data(cfg.data.path, cfg.model.name)
    splits = cls.load(cfg, seed)
    if cfg.data.test_fraction:
        splits = hold_out_test(splits, cfg.data.test_fraction, seed, cfg.data.val_fraction)
    if cfg.data.shots:
        splits = take_shots(splits, cfg.data.shots, seed)
    if cfg.data.group_column:
        g = splits.val.groups
        if g is None or len(set(g.tolist())) < 2:
            found = sorted(set(g.tolist())) if g is not None else []
            raise UserError(
                f"--group-column {cfg.data.group_column}: the validation split has {len(found)} group(s) ({', '.join(found[:5])}); "
                "metrics per group need at least two"
            )
    return splits


def hold_out_test(splits, fraction: float, seed: int, val_fraction: float | None = None):
    """Move a seeded `fraction` of each class's labelled examples (training split plus a drawn
    validation split; the training split alone when validation was given) from train into a test
    split, which training and model selection never see; at least one example of each class stays in
    training. `val_fraction`: the drawn validation split's, which the two together must leave room for
    (--test-fraction 0.9 with --val-fraction 0.5 held out 48%, not 90%, and said nothing)."""
    import copy

    if splits.test is not None:
        raise UserError(f"{splits.source} has its own test split ({len(splits.test)} examples); --test-fraction is for data without one")
    if val_fraction is not None and not splits.val_given and fraction + val_fraction >= 1:
        raise UserError(f"--test-fraction {fraction:g} and --val-fraction {val_fraction:g} together leave no training data; "
                        "the two fractions must add up to less than 1")
    rng = np.random.default_rng([seed, 7])  # another stream than the validation split's
    y, yv = splits.train.labels, splits.val.labels
    test, short = [], []
    for c in range(len(splits.classes)):
        idx = np.flatnonzero(y == c)
        total = len(idx) + (0 if splits.val_given else int((yv == c).sum()))
        n = min(max(1, int(round(total * fraction))), len(idx) - 1)
        if n < 1:
            raise UserError(f"--test-fraction: class {splits.classes[c]!r} has {len(idx)} training example(s), too few to hold any out")
        if n < round(total * fraction):
            short.append(f"{splits.classes[c]} {n} of {total}")
        test.extend(rng.permutation(idx)[:n].tolist())
    held = np.zeros(len(y), dtype=bool)
    held[test] = True
    out = copy.copy(splits)
    out.train, out.test = splits.train.subset(np.flatnonzero(~held)), splits.train.subset(np.flatnonzero(held))
    out.notes = list(splits.notes) + [f"--test-fraction {fraction:g}: {len(test)} examples held out as the test split (seed {seed})"
                                      + (f"; fewer where a class keeps one training example: {', '.join(short[:5])}" if short else "")]
    return out


def take_shots(splits, shots: int, seed: int):
    """Keep `shots` training examples per class (all of a smaller class), drawn with `seed`."""
    import copy

    rng = np.random.default_rng(seed)
    keep = []
    y = splits.train.labels
    short = []
    for c in range(len(splits.classes)):
        idx = np.flatnonzero(y == c)
        if len(idx) < shots:
            short.append(f"{splits.classes[c]} ({len(idx)})")
        keep.extend(rng.permutation(idx)[:shots].tolist())
    out = copy.copy(splits)
    out.train = splits.train.subset(sorted(keep))
    out.notes = list(splits.notes) + [f"--shots {shots}: {len(keep)} training examples"] + (
        [f"classes with fewer than {shots} examples kept whole: {', '.join(short)}"] if short else []
    )
    return out
