"""The Python API, estimator-style (scikit-learn's conventions: the constructor stores its arguments,
`fit` does the work and returns self, learned state ends with an underscore; get_params / set_params,
so `sklearn.base.clone` and `cross_val_score` take it, and `score(X, y)` is the accuracy).

    clf = ImageClassifier(model="efficientnet_lite0", strategy="lp_ft").fit("path/to/images")
    clf = TextClassifier(model="minilm_l6", strategy="lora").fit("reviews.csv"); clf.predict(["great film"])
    clf.predict(["a.jpg", "b.jpg"]); clf.evaluate("path/to/test"); clf.save("run/")
    clf = ImageClassifier.load("run/")
    clf = TextClassifier().fit(texts, labels)          # examples in memory, as scikit-learn's fit(X, y)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import FLAT, RunConfig, changed_settings, config_from_dict, replace
from .data import ImageSet, as_image_array, decode_images, decoded_cache, image_files, pixels_to_uint8
from .errors import COMMAND_LINE, UserError, did_you_mean, warn_user
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError


CACHE_FROM_IMAGES = 32  # predict and explain keep decoded images in the cache from this many (a folder, evaluated again)


# Words that go on with the sentence after a flag ("--text-column and --label-column", "--baseline
# comparison fits"); any other word after a flag that takes text is its value.
_PROSE = {"and", "or", "to", "is", "are", "for", "with", "names", "needs", "takes", "alone", "as", "at", "in", "on", "of", "the",
          "a", "an", "not", "if", "when", "was", "be", "too", "also", "says", "asked", "lowers", "trains", "comparison", "fits",
          "that", "which", "from", "entry", "given", "only", "then", "it", "its", "this", "reads", "matches", "whose", "has",
          "have", "can", "cannot", "would", "will", "does", "do", "by", "so", "but", "/", "-", "(", "x"}
_CALLS = {"out", "overwrite", "data", "quiet", "mistakes_csv", "skip_bad_images"}  # arguments of fit/evaluate/predict, not settings


def python_words(message: str) -> str:
    """A message of the shared code, which names the command line's flags, said in the Python API's
    words: `--val-fraction 0.5` as `val_fraction=0.5`, `--class-weight balanced` as
    `class_weight='balanced'`, a switch (`--grad-checkpointing`) as `=True`, a bare `--epochs` as
    `epochs`. A command quoted whole (`transferkit fit --resume RUN`, or anything in backticks) is
    left as it is: it is one to run in a shell. A flag no keyword argument takes is left too."""
    import re
    from dataclasses import fields

    kinds = {f"{sec.name}.{f.name}": str(f.type) for sec in fields(RunConfig) for f in fields(sec.default_factory)}  # type: ignore[misc]

    def said(word: str, name: str, kind: str) -> str:  # word: what the flag took, or the next word of the sentence
        if kind.startswith("bool"):
            return f"{name}=True" + (f" {word}" if word else "")
        if not word:
            return name
        if re.fullmatch(r"-?\d[\d.]*(e-?\d+)?", word) and ("int" in kind or "float" in kind or "list" in kind) or re.fullmatch(r"'[^']*'", word):
            return f"{name}={word}"
        if "str" in kind and word not in _PROSE:  # a column's name, a pattern, a model: a value, quoted (group_column label was half Python)
            return f"{name}={word!r}"
        return f"{name} {word}"

    def one(m: re.Match) -> str:
        name, word = m.group(1).replace("-", "_"), m.group(2) or ""
        if name not in FLAT and name not in _CALLS:
            return m.group(0)
        kind = kinds.get(FLAT.get(name, ""), "bool" if name in ("overwrite", "quiet", "skip_bad_images") else "str")
        tail = word[len(word.rstrip(".,:")):]  # the sentence's punctuation, not the value's
        return said(word[: len(word) - len(tail)], name, kind) + tail

    def flags(text: str) -> str:
        return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)(?: (?!--)([^\s;()]+))?", one, text)

    message = re.sub(r" \((\w+=[^()]*) in Python\)", "", message)  # "--overwrite (overwrite=True in Python)": said once
    out, last = [], 0
    for keep in re.finditer(r"`[^`]*`|transferkit [a-z][\w-]*[^;)\n]*", message):  # commands to run, kept as they are
        out += [flags(message[last:keep.start()]), keep.group(0)]
        last = keep.end()
    return "".join(out) + flags(message[last:])


def _python_words(method):
    """A UserError raised inside `method` says its flags in Python words (python_words), keeping its
    type and traceback."""
    import functools

    @functools.wraps(method)
    def said_in_python(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except UserError as e:
            if e.args and isinstance(e.args[0], str) and not COMMAND_LINE.get():  # the command line keeps its flags
                e.args = (python_words(e.args[0]), *e.args[1:])
            raise

    return said_in_python


class NotFitted(UserError, NotFittedError):
    """predict (and the rest) before fit: a UserError for the command line, scikit-learn's
    NotFittedError for code that catches that."""


class _Classifier(ClassifierMixin, BaseEstimator):  # the mixin first, as scikit-learn asks (its tags say "classifier")
    """What image and text classifiers share: settings, fit, evaluate, save, load. scikit-learn's
    BaseEstimator reads parameters from the constructor's signature, which **settings hides: the
    parameters come from get_params / set_params below instead."""

    default_model = "efficientnet_lite0"
    kind = "classifier"

    def __init__(self, model: str | None = None, strategy: str = "lp_ft", **settings):
        for k in settings:
            if k == "data":
                raise UserError("the data goes to fit(data), not to the constructor")
            if k in ("quiet", "out", "overwrite"):
                raise UserError(f"{k} is an argument of fit(): fit(data, {k}=...)")
            if k not in FLAT:
                raise UserError(f"unknown setting {k!r}{did_you_mean(k, FLAT)}")
        self.model = model  # as given (None: default_model): scikit-learn's clone checks that nothing is changed here
        self.strategy = strategy
        self._settings = dict(settings)  # private: scikit-learn's checks allow only the constructor's arguments as attributes

    @property
    def settings(self) -> dict:
        """The keyword arguments given (the settings of `transferkit fit` by their flag names)."""
        return self._settings

    @property
    def model_name(self) -> str:
        return self.model or self.default_model

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments (scikit-learn's `clone` builds a new classifier from them)."""
        return {"model": self.model, "strategy": self.strategy, **self.settings}

    def set_params(self, **params):
        for k, v in params.items():
            if k in ("model", "strategy"):
                setattr(self, k, v)
            elif k in FLAT:
                self._settings[k] = v
            else:
                raise UserError(f"unknown setting {k!r}{did_you_mean(k, FLAT)}")
        return self

    @_python_words
    def score(self, X, y, sample_weight=None) -> float:
        """The accuracy of predict(X) against y (scikit-learn's classifier score), weighted by
        `sample_weight` when given."""
        self._check_fitted()
        items = self._examples(X)  # once: a generator is read once
        truth = _labels(y, len(items), X)
        if sample_weight is not None and len(np.ravel(np.asarray(sample_weight, dtype=float))) != len(truth):
            raise UserError(f"sample_weight has {len(np.ravel(sample_weight))} weights for {len(truth)} examples: give one per example")
        truth = self._known_labels(truth)  # labels of another type, matched by their text as classes_ is: 0/1 against a CLI run's "0"/"1" scored 0.0
        known = set(self.classes_.tolist())
        unknown = sorted({str(t) for t in truth if t not in known})
        if unknown:  # they can never be predicted: the score was quietly lower
            warn_user(f"score: y has label(s) the model was not trained on, counted as wrong: {', '.join(unknown[:5])}"
                      f"{' ...' if len(unknown) > 5 else ''} (its classes: {', '.join(map(str, sorted(known, key=str)[:10]))})")
        right = [p == t for p, t in zip(self.predict(items), truth)]
        return float(np.average(right, weights=None if sample_weight is None else np.asarray(sample_weight, dtype=float)))

    def __repr__(self) -> str:
        args = [f"model={self.model!r}", f"strategy={self.strategy!r}"] + [f"{k}={v!r}" for k, v in self.settings.items()]
        fitted = f"  # fitted: {len(self.class_names_)} classes" + (f", run {self.run_dir_}" if getattr(self, "run_dir_", None) else "") if hasattr(self, "model_") else ""
        return f"{type(self).__name__}({', '.join(args)}){fitted}"

    def get_config(self, data: str | None = None) -> RunConfig:
        return replace(RunConfig(), model=self.model_name, strategy=self.strategy, data=data, **self.settings)

    @_python_words
    def fit(self, data, y=None, *, out: str | Path | None = None, overwrite: bool = False, quiet: bool = True):
        """`data`: a folder, a CSV/TSV or `digits`, as `transferkit fit --data` takes; or examples with
        their labels `y` (scikit-learn's fit(X, y)): texts for a TextClassifier, images (paths, PIL
        images, arrays) for an ImageClassifier. Those are written to a CSV (and PNG files for images
        in memory) in a new temporary folder, which the run reads; the folder is removed when fit
        returns or fails, except when an `out=` run stops before it ends (`transferkit fit --resume
        OUT` reads it)."""
        import shutil

        from . import report
        from .fit import fit

        self._warn_ignored()  # before any temporary folder exists (a warning raised as an error left it behind)
        labels_given, examples = None, None
        if y is not None:
            from .ranking import check_model_name

            check_model_name(self.model_name, self.settings.get("arch"))  # a typo named as one, not as "data.csv looks like text data"
            columns = [k for k in ("text_column", "label_column", "group_column", "delimiter", "encoding") if self.settings.get(k) is not None]
            if columns:  # they named the columns of the temporary CSV (text, label), which the user never saw
                raise UserError(f"{', '.join(columns)} name{'s' if len(columns) == 1 else ''} the columns or format of a data file; fit(X, y) takes "
                                "the examples and their labels themselves: leave them out, or fit on the file (fit('data.csv'))")
            data, labels_given = self._write_examples(data, y)
            examples = Path(data).parent
        elif not isinstance(data, (str, Path)):
            raise UserError(f"fit takes a path (a folder, a CSV, 'digits') or examples with their labels, fit(X, y); got {type(data).__name__} without labels")
        finished = False
        try:
            values = _label_values(labels_given) if labels_given is not None else None
            # images in memory, copied to temporary PNG files read once: their decoded copies are not cached
            con = report.console(quiet=quiet)
            with decoded_cache(examples is None or not (examples / "images").is_dir()):
                r = fit(self.get_config(str(data)), out, overwrite=overwrite, console=con, label_values=values,
                        data_name=None if examples is None else f"the {len(labels_given)} examples given to fit(X, y)",
                        source_name=None if examples is None else _source_name(examples / "images", str(data)))
            finished = True
        except UserError as e:
            if examples is None or str(data) not in str(e):
                raise
            # the temporary CSV of fit(X, y) is named as what the user gave (and is gone once this is read)
            raise type(e)(str(e).replace(str(data), "the data given to fit(X, y)")) from None
        finally:
            if examples is not None and (finished or out is None or not (Path(out) / "checkpoints").is_dir()):
                shutil.rmtree(examples, ignore_errors=True)  # a PNG copy of every image, on every call
        if quiet:  # what the command line says in yellow (copies across splits, a model that predicts one class, ...) is not lost
            for note in r.warnings + [k for k in getattr(con, "kept", []) if k not in r.warnings]:
                note = note if examples is None else note.replace(str(data), "the examples given to fit(X, y)")
                warn_user(note if COMMAND_LINE.get() else python_words(note))
        self._set_fitted(r.model, r.classes, r.inputs, r.config)
        self.metrics_, self.history_, self.run_dir_ = r.metrics, r.history, r.run_dir
        self.train_fingerprints_ = {f for f in r.train_fingerprints if f}
        self.val_fingerprints_ = {f for f in r.val_fingerprints if f}
        if labels_given is not None:  # predict gives back y's own labels (ints stay ints), as scikit-learn's do
            self._label_of = _label_values(labels_given)
        else:
            self.__dict__.pop("_label_of", None)  # a refit on a path: the names are the labels
        self.classes_ = self._classes_array()
        return self

    def _warn_ignored(self) -> None:
        """A keyword argument the run would not read (`k=3` with strategy 'lora') is warned about,
        as the command line notes the flag, not silently dropped."""
        from .strategies import ignored_settings

        given = {k for k, v in self.settings.items() if v is not None}
        for n, (kind, own, users) in ignored_settings(self.get_config(), given).items():
            warn_user(f"{n}={self.settings[n]!r} is not used by {kind} {own!r} (only by {users})")

    def _examples(self, X) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_examples(self, X, y, purpose: str = "fit") -> tuple[str, list]:
        """fit(X, y)'s (or evaluate(X, y)'s) examples as a CSV with a label column (and PNG files for
        images in memory) in a new temporary folder; returns the CSV's path and the labels."""
        import csv
        import io
        import shutil
        import tempfile

        from .rundir import atomic_write_bytes

        items = self._examples(X)  # once: a generator is read once
        labels = _labels(y, len(items), X)
        if purpose == "evaluate":
            labels = self._known_labels(labels)
        kinds = sorted({str(v).strip() for v in labels})  # the run reads a label without the spaces around it
        spaced = sorted({repr(v) for v in labels if isinstance(v, str) and v != v.strip()})
        if spaced:
            warn_user(f"y: label(s) {', '.join(spaced[:5])}{' ...' if len(spaced) > 5 else ''} are read without their surrounding "
                      "spaces: such a label and the same label without them are one class")
        if len(kinds) < 2 and purpose == "fit":  # said of y, not of the temporary CSV it would be written to
            raise UserError(f"fit(X, y): y has {len(kinds)} class ({', '.join(kinds) or 'none'}); classification needs at least two")
        folder = Path(tempfile.mkdtemp(prefix="transferkit-data-"))
        try:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")  # Unix line ends (the csv default is CRLF)
            w.writerow([self.kind_column, "label"])
            for i, (x, label) in enumerate(zip(items, labels)):
                if isinstance(x, np.ndarray):  # an image in memory: a lossless file the run can read
                    (folder / "images").mkdir(exist_ok=True)
                    x_path = folder / "images" / f"{i:06d}.png"
                    Image.fromarray(x).save(x_path)
                    x = str(x_path)
                elif self.kind_column == "path":
                    x = str(Path(x).resolve())
                w.writerow([x, str(label)])
            atomic_write_bytes(folder / "data.csv", buf.getvalue().encode())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return str(folder / "data.csv"), labels

    def _set_fitted(self, model, classes, inputs, config) -> None:
        self.model_, self.class_names_, self.inputs_, self.config_ = model, list(classes), inputs, config
        self.__dict__.pop("_label_of", None)
        self.classes_ = self._classes_array()

    def _classes_array(self) -> np.ndarray:
        """scikit-learn's `classes_`: the labels sorted as np.unique(y) sorts them, fit(X, y)'s own
        values (ints stay ints), else the class names; `predict_proba`'s columns follow it (`_columns`:
        the model's column of each). `class_names_` holds the names as text in the model's own order,
        as a run directory does. It was `class_names_` itself, a list of text in the run's order
        ("9" before "10"), which scikit-learn's roc_auc and log-loss scorers read as no class at all, or
        as the other class (a perfect model scored roc_auc 0.0)."""
        of = getattr(self, "_label_of", {})
        values = [of.get(c, c) for c in self.class_names_]
        try:
            order = sorted(range(len(values)), key=lambda i: values[i])
        except TypeError:  # labels of several types that do not compare: the model's order
            order = list(range(len(values)))
        self._columns = np.asarray(order, dtype=np.int64)
        ordered = [values[i] for i in order]
        if len({type(v) for v in values}) > 1:
            out = np.empty(len(ordered), dtype=object)
            out[:] = ordered
            return out
        return np.asarray(ordered)

    def _public(self, proba: np.ndarray) -> np.ndarray:
        """The model's probability columns in `classes_`'s order."""
        cols = getattr(self, "_columns", None)
        return proba if cols is None else proba[:, cols]

    def __setstate__(self, state: dict) -> None:
        """A classifier pickled before settings became private (`_settings`) loads as it was."""
        state = dict(state)
        if "settings" in state and "_settings" not in state:
            state["_settings"] = state.pop("settings")
        super().__setstate__(state)  # scikit-learn's: its version check
        if "class_names_" not in state and isinstance(state.get("classes_"), list):  # classes_ was the names, as text
            self.class_names_ = state["classes_"]
            self.classes_ = self._classes_array()

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFitted(f"this {type(self).__name__} is not fitted yet: call fit() or {type(self).__name__}.load()")

    def _encode(self, items) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    @_python_words
    def predict_proba(self, items) -> np.ndarray:
        """One row of class probabilities per item, in `classes_`'s order; a folder's images come in
        sorted path order (`transferkit.data.image_files(folder)` lists them so)."""
        import contextlib

        from .trainer import predict_proba

        self._check_fitted()
        x, _ = self._encode(items)
        return self._public(predict_proba(self.model_, x, self.inputs_.eval_transform(), 64, contextlib.nullcontext).numpy())

    def _targets(self, target, proba: np.ndarray) -> np.ndarray:
        """explain()'s `target` as the model's column indices, one per item: None (the class said), one
        target for all, or one per item; each a label of `classes_` (by its text too: 8 for a class
        named '8'), or a column of `predict_proba` where the labels are not ints. A label given as a
        column index ([8] for classes 3, 8) gave no map, silently; an int that is a class and another
        class's column is refused."""
        n, k = proba.shape
        if target is None:
            return proba.argmax(1)
        many = isinstance(target, (list, tuple, np.ndarray, torch.Tensor)) and np.ndim(target) > 0
        items = list(np.asarray(target).tolist()) if many else [target] * n
        if len(items) != n:
            raise UserError(f"target: {len(items)} given for {n} item(s); give one per item, or one for all")
        labels = self.classes_.tolist()
        by_text = {str(c).strip(): i for i, c in enumerate(labels)}
        ints = all(isinstance(c, int) and not isinstance(c, bool) for c in labels)
        out = []
        for t in items:
            t = t.item() if isinstance(t, np.generic) else t
            label = labels.index(t) if t in labels else by_text.get(str(t).strip())
            column = t if isinstance(t, int) and not isinstance(t, bool) and not ints and 0 <= t < k else None
            if label is not None and column is not None and label != column:
                raise UserError(f"target {t!r} is both the class {labels[label]!r} and column {column} of predict_proba (the class "
                                f"{labels[column]!r}): give the class as classes_ holds it ({labels[label]!r} or {labels[column]!r})")
            pick = label if label is not None else column
            if pick is None:
                raise UserError(f"target {t!r} is not a class of this model ({', '.join(map(str, labels[:10]))})"
                                + ("" if ints else f" nor a column index 0-{k - 1}"))
            out.append(pick)
        return self._columns[np.asarray(out, dtype=np.int64)] if getattr(self, "_columns", None) is not None else np.asarray(out, dtype=np.int64)

    def predict(self, items) -> np.ndarray:
        """The class of each item, an array of `classes_`'s values: its name, or the label as fit(X, y)
        was given it (an int stays an int)."""
        columns = self.predict_proba(items).argmax(1)  # (first: before fit, it says so)
        return self.classes_[columns]

    @_python_words
    def evaluate(self, data, y=None, *, mistakes_csv: str | Path | None = None, skip_bad_images: bool = False) -> dict:
        """Metrics on labelled data: its test split if it has one, else val, else all of it (on the
        data the model was fitted on: its held-out test split, or its validation split); or on
        examples with their labels, evaluate(X, y), taken as fit(X, y) takes them (an image given as
        an array is named X[i] in the mistakes). Examples the run trained on, known by content, are
        left out, and `["data"]` says how many. The wrong examples, most confidently wrong first: the
        10 first in `["mistakes"]`, all of them in `mistakes_csv` when given. `skip_bad_images`: leave
        out unreadable images (listed in `["skipped"]`) instead of failing."""
        import shutil

        from .evaluate import evaluate_model

        from .rundir import refuse_unwritable_file

        self._check_fitted()
        if mistakes_csv is not None:  # before the work, not after it
            refuse_unwritable_file(mistakes_csv, f"mistakes_csv={str(mistakes_csv)!r}")
        if y is None:
            if not isinstance(data, (str, Path)):  # a list of texts was a pathlib "File name too long"
                raise UserError(f"evaluate takes labelled data by its path (a folder, a CSV/TSV) or examples with their labels, "
                                f"evaluate(X, y); got {type(data).__name__} without labels")
            return evaluate_model(self, str(data), mistakes_csv=mistakes_csv, skip_bad_images=skip_bad_images)
        path, labels = self._write_examples(data, y, purpose="evaluate")
        folder, given = Path(path).parent, f"the {len(labels)} examples given to evaluate(X, y)"
        try:
            with decoded_cache(not (folder / "images").is_dir()):  # temporary PNG copies: read once, not cached
                m = evaluate_model(self, path, mistakes_csv=mistakes_csv, skip_bad_images=skip_bad_images, source_name=_source_name(folder / "images", path))
        except UserError as e:
            raise type(e)(str(e).replace(path, given)) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        m["data"] = m["data"].replace(path, given)
        return m

    def _known_labels(self, truth: list) -> list:
        """Labels of another type matched to `classes_` by their text, as score matches them: 0/1
        against a command line run's "0"/"1", 0.0 (a pandas column with a NaN is float) as 0."""
        known = {k: k for k in self.classes_.tolist()}  # 0.0 and True find the key 0 and 1 (equal, and hashed alike) and become it
        by_text = {str(k).strip(): k for k in known}

        def text_of(t) -> str:
            return str(int(t)) if isinstance(t, float) and t.is_integer() and str(t) not in by_text else str(t).strip()

        return [known[t] if t in known else by_text.get(text_of(t), t) for t in truth]

    @_python_words
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from .fit import model_meta, write_fingerprints, write_model
        from .rundir import RunDir

        self._check_fitted()
        if getattr(self, "run_dir_", None) is not None and Path(path).resolve() == Path(self.run_dir_).resolve():
            # --overwrite of its own run kept the model and dropped metrics.json, report.html, the plots ...
            raise UserError(f"{path} is the run this classifier comes from, with its metrics and report: save to another folder")
        rd = RunDir(path, overwrite=overwrite).create()
        write_model(rd, self.model_, model_meta(self.model_, self.class_names_, self.inputs_, self.config_, getattr(self, "_label_of", None)))
        rd.write_yaml("config.yaml", self.config_.to_dict())
        if getattr(self, "train_fingerprints_", None) is not None:  # evaluate on the saved run leaves its training examples out too
            write_fingerprints(rd, sorted(self.train_fingerprints_), sorted(getattr(self, "val_fingerprints_", ())))
        rd.finalize()
        return rd.path

    @_python_words
    def export(self, out: str | Path, *, data: str | None = None, overwrite: bool = False) -> dict:
        """Write an ONNX model that does its own preprocessing to the folder `out`, checked against
        PyTorch with onnxruntime (and on labelled `data` if given); returns what export.json says."""
        from .export import export_classifier

        self._check_fitted()
        return export_classifier(self, out, overwrite=overwrite, data=data, run=str(self.run_dir_) if getattr(self, "run_dir_", None) else None)

    @classmethod
    @_python_words
    def load(cls, path: str | Path):
        """A finished run directory; returns an ImageClassifier or a TextClassifier, as the run is."""
        import yaml

        from .backbones import Preprocess
        from .fit import load_fingerprints, load_model
        from .inputs import ImageInputs, TextInputs

        if Path(path).is_file():
            raise UserError(f"{path} is a file: give a run directory (the folder `transferkit fit --out`, fit(out=...) or save() wrote)")
        model, meta = load_model(path)
        if not meta.get("classes"):  # `adapt` of a pretrained model: a backbone, no classifier (predict crashed on argmax)
            raise UserError(f"{path} is an adapted backbone with no classes (a `transferkit adapt` run): it has nothing to predict, "
                            f"evaluate or export; fine-tune it first: transferkit fit --data LABELLED_DATA --model run:{path}")
        cfg_file = Path(path) / "config.yaml"
        cfg = config_from_dict(yaml.safe_load(cfg_file.read_text())) if cfg_file.is_file() else RunConfig()
        # the run's own settings, but for the data, the model and the strategy (the constructor's own
        # arguments), so that a refit trains as it did (they were forgotten)
        settings = changed_settings(cfg, [k for k in FLAT if k not in ("data", "model", "strategy")])
        from .config import default_lr

        if settings.get("lr") == default_lr(meta.get("modality", "image"), cfg.strategy.name):
            # the strategy's default rate, which config.yaml writes resolved: kept as a setting it followed a
            # set_params(strategy='full') of a text probe at 10x that strategy's default (QA AQ)
            settings.pop("lr")
        if meta.get("modality") == "text":
            cfg = replace(cfg, max_length=meta.get("max_length", cfg.data.max_length))
            out, inputs = TextClassifier(model=cfg.model.name, strategy=cfg.strategy.name, **settings), TextInputs(cfg, model.backbone)
        else:
            out, inputs = ImageClassifier(model=cfg.model.name, strategy=cfg.strategy.name, **settings), ImageInputs(cfg, model.backbone)
            inputs.pre = Preprocess.from_dict(meta["preprocess"])
        out._set_fitted(model, meta["classes"], inputs, cfg)
        if meta.get("label_values") and len(meta["label_values"]) == len(meta["classes"]):  # fit(X, y)'s labels keep their type
            out._label_of = dict(zip(meta["classes"], meta["label_values"]))
            out.classes_ = out._classes_array()
        out.run_dir_ = Path(path)
        out.train_fingerprints_, out.val_fingerprints_ = load_fingerprints(path)
        out._adapted = bool(meta.get("adapted"))  # AdaBN of a run: its config names the unlabelled data, its fingerprints the source run's
        return out


def _source_name(images: Path, table: str | None = None):
    """fit(X, y)'s (or evaluate(X, y)'s) image in memory, written to images/000017.png of the
    temporary folder (gone once fit returns), said as X[17]; a text's row of the temporary CSV
    (data.csv:19, its header row 1) as X[17] too; a file given by its path keeps it."""
    import re

    def name(source):
        m = re.fullmatch(re.escape(str(images)) + r"[/\\](\d+)\.png", str(source))
        if m:
            return f"X[{int(m.group(1))}]"
        m = re.fullmatch(re.escape(str(table)) + r":(\d+)", str(source)) if table else None
        return f"X[{int(m.group(1)) - 2}]" if m else source

    return name


def _label_values(labels: list) -> dict:
    """Each class name (a label's text, without surrounding spaces, as the run reads it) -> the label as
    y gave it: predict gives that back. Of 'pos' and 'pos ', 'pos'."""
    out: dict = {}
    for v in labels:
        k = str(v).strip()
        if k not in out or str(v) == k:
            out[k] = v
    return out


def _one_column(X, what: str):
    """A pandas DataFrame of one column as that column (a Series); one of several is refused. It was
    iterated as its column names: predict(df) gave one prediction, for the string 'text'."""
    if hasattr(X, "columns") and hasattr(X, "iloc") and getattr(X, "ndim", 2) == 2:
        cols = [str(c) for c in X.columns]
        if len(cols) != 1:
            raise UserError(f"{what} is a DataFrame with {len(cols)} columns ({', '.join(cols[:6])}{' ...' if len(cols) > 6 else ''}): "
                            f"give the one column, as X[{cols[0]!r}]" if cols else f"{what} is a DataFrame with no column")
        return X.iloc[:, 0]
    return X


def _labels(y, n: int, X=None) -> list:
    """fit(X, y)'s or score(X, y)'s labels as a list of plain values: one per example, none missing;
    a column (n, 1) is read as its values, as scikit-learn's column_or_1d does. `X`: the examples, to
    say why there are fewer than the labels (a 2-D array is one grayscale image)."""
    y = _one_column(y, "y")
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    labels = list(y.tolist() if isinstance(y, np.ndarray) else y) if not isinstance(y, (str, bytes)) and hasattr(y, "__iter__") else None
    if labels is None or len(labels) != n:
        why = ""
        if isinstance(X, (np.ndarray, torch.Tensor)) and X.ndim == 2 and n == 1:  # rows of features, or a batch flattened
            why = (f"; X, an array of shape {tuple(X.shape)}, is one HxW grayscale image: a batch of images is NxHxW or NxHxWx3 "
                   "(or a list of images), and rows of numbers are not images")
        raise UserError(f"y must give one label per example: {n} examples, " + ("a string" if isinstance(y, (str, bytes)) else f"a {type(y).__name__}" if labels is None else f"{len(labels)} labels") + why)
    labels = [v.item() if isinstance(v, np.generic) else v for v in labels]
    for i, v in enumerate(labels):
        if v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType"):  # a table's empty cell: it became a class 'nan' ('<NA>')
            raise UserError(f"y: label {i + 1} is missing ({v!r})")
        if isinstance(v, (list, tuple, dict, set, np.ndarray)):
            raise UserError(f"y: label {i + 1} is a {type(v).__name__} ({v!r}); give one label per example (a 1-D list or array)")
    return labels


class ImageClassifier(_Classifier):
    """Fine-tune a pretrained image backbone with a new head. Keyword arguments are the settings of
    `transferkit fit` by their flag names (model, strategy, epochs, batch_size, lr, seed, head, ...)."""

    kind_column = "path"

    @property
    def preprocess_(self):
        return self.inputs_.pre

    def _examples(self, X) -> list:
        return self._sources(X)

    def _encode(self, images) -> tuple:
        """Paths, a folder of images, PIL images, or arrays / tensors (HxWx3 uint8, or as
        `data.as_image_array` scales them) -> (uint8 tensor, source names)."""
        u8, names, _ = self._encode_kept(self._sources(images))
        return u8, names

    def _sources(self, images) -> list:
        """`_encode`'s inputs as a list of file paths (str) and HxWx3 uint8 arrays."""
        images = _one_column(images, "X")
        if isinstance(images, (str, Path)):
            p = Path(images)
            images = [str(f) for f in image_files(p)] if p.is_dir() else [str(p)]
            if not images:
                raise UserError(f"no image files in {p}")
        if isinstance(images, Image.Image):
            images = [images]
        elif isinstance(images, np.ndarray) and images.dtype.kind not in "buif":
            images = list(images)  # an array of paths or of images (scikit-learn's folds index X as one): a list
        elif isinstance(images, (np.ndarray, torch.Tensor)):  # one image, or a batch along the first axis
            if images.ndim not in (2, 3, 4) or (images.ndim == 3 and images.shape[-1] == 2):
                # a 1-D array was "image 0: ... got uint8"; (32, 32, 2) became 32 images of 32 x 2 pixels
                raise UserError(f"expected one image (HxW, HxWx3 or HxWx4) or a batch of them (NxHxW, NxHxWx3, NxHxWx4); got an array of shape "
                                f"{tuple(images.shape)}")
            one = images.ndim == 2 or (images.ndim == 3 and (images.shape[-1] in (1, 3, 4) or (isinstance(images, torch.Tensor) and images.shape[0] in (1, 3))))
            if not one and images.dtype not in (np.uint8, torch.uint8) and images.ndim >= 3:  # a batch: one scale for all
                a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
                a = pixels_to_uint8(a, "the image batch")  # a dark image of a 0-255 batch is not scaled again by itself
                images = torch.from_numpy(a) if isinstance(images, torch.Tensor) else a
            images = [images] if one else list(images)
        if isinstance(images, (bytes, bytearray)) or not hasattr(images, "__iter__"):
            raise UserError(f"expected an image (a path, a PIL image, an array), a folder, or a list of them; got {type(images).__name__}")
        sources = [str(s) if isinstance(s, (str, Path)) else as_image_array(s, f"image {i}") for i, s in enumerate(images)]
        if not sources:
            raise UserError("no images to classify")
        for s in sources:
            if isinstance(s, str) and not Path(s).is_file():
                raise UserError(f"image not found: {s}")
        return sources

    def _encode_kept(self, sources: list, skip_bad: bool = False) -> tuple:
        """(uint8 tensor, names, problems) of paths or arrays; with `skip_bad`, unreadable files are
        left out (named in problems) instead of failing."""
        s = ImageSet(sources, np.arange(len(sources)), self.class_names_)  # labels: each image's position, to name the kept ones
        # a few images (predict in a loop, one at a time) are decoded in memory: each call added two cache files never read again
        u8, kept, bad = decode_images(s, self.preprocess_.resize_size, self.preprocess_.interpolation, skip_bad=skip_bad,
                                      cache=len(sources) >= CACHE_FROM_IMAGES)
        names = [sources[i] if isinstance(sources[i], str) else f"array[{i}]" for i in kept.labels.tolist()]
        return u8, names, bad

    _decode = _encode

    @_python_words
    def explain(self, images, target=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(probabilities, crops, maps): for each image its class probabilities (in `classes_`'s order), the image as the
        model sees it ((n, R, R, 3) uint8 centre crop) and the Grad-CAM map ((n, R, R) in [0, 1]) of
        where it looked for class `target[i]` (a label of `classes_`, or a column index; one target for all, or one per image; default: the class it says): on a CNN's last feature map,
        a vision transformer's patch tokens or Swin's last map. Maps are None for a backbone with
        neither a spatial map nor a square grid of tokens."""
        import contextlib

        from .mistakes import explain
        from .trainer import predict_proba

        self._check_fitted()
        x, _ = self._encode(images)
        tf = self.inputs_.eval_transform()
        proba = predict_proba(self.model_, x, tf, 64, contextlib.nullcontext).numpy()
        target = self._targets(target, proba)
        crops, maps, _ = explain(self.model_, x, target, self.preprocess_.input_size, tf, "cpu")
        return self._public(proba), crops, maps


class TextClassifier(_Classifier):
    """Fine-tune a pretrained text encoder (minilm_l6, hf:NAME, dir:PATH) with a new head; data is a
    CSV/TSV with a text and a label column. `predict` takes a list of strings."""

    default_model = "minilm_l6"
    kind_column = "text"

    def _encode(self, texts) -> tuple:
        """A text (str), texts, or a pathlib.Path: a file of texts (one per line, or a CSV/TSV's text
        column), as `transferkit predict` reads it."""
        x, texts, cut = self._tokenized(texts)
        if cut and not COMMAND_LINE.get():  # said by predict, as fit says its own (the command line says it in its own words)
            warn_user(f"{cut} of {len(texts)} texts are longer than the model's max_length={self.inputs_.max_length} tokens and "
                      "were cut there, as in training (the model sees their beginnings)")
        return x, texts

    def _tokenized(self, texts) -> tuple:
        """(token ids, texts, how many were cut at max_length): predict leaves the estimator as it was (it
        kept the count in texts_cut_, which scikit-learn's check_estimator flags)."""
        texts = self._examples(texts)
        x, cut = self.model_.backbone.tokenize(texts, self.inputs_.max_length)
        return x, texts, cut

    def _examples(self, texts) -> list[str]:
        """`_encode`'s inputs as a list of non-empty strings."""
        texts = _one_column(texts, "X")
        if isinstance(texts, Path):
            from .text_data import read_texts

            texts = read_texts(str(texts), text_column=self.config_.data.text_column if hasattr(self, "config_") else self.settings.get("text_column"))
        if isinstance(texts, str):
            if len(texts) < 1024 and Path(texts).suffix.lower() in (".txt", ".csv", ".tsv") and Path(texts).is_file():
                warn_user(f"classifying the string {texts!r} itself; to classify the texts in that file, pass Path({texts!r})")
            texts = [texts]
        if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
            raise UserError(f"expected a text (str), a list of texts or a Path to a file of texts, got {type(texts).__name__}")
        texts = list(texts)
        if not texts:
            raise UserError("no texts to classify")
        for i, t in enumerate(texts):
            if t is None or (isinstance(t, float) and t != t) or type(t).__name__ == "NAType":  # None, or a NaN (pandas' NA) from a table's empty cell
                raise UserError(f"text {i + 1} is missing ({t!r})")
            if not isinstance(t, str):
                raise UserError(f"text {i + 1} is not a string: {t!r} ({type(t).__name__})")
        for i, t in enumerate(texts):
            if not t.strip():
                raise UserError(f"text {i + 1} is empty")
        return texts

    def _tokens(self, texts: list[str]):
        """Token ids, padded, with no check: word occlusion leaves "" of a one-word text, which
        `_encode` refuses as a user's input."""
        return self.model_.backbone.tokenize(texts, self.inputs_.max_length)[0]

    @_python_words
    def explain(self, texts, target=None) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """(probabilities, evidence): for each text its class probabilities (in `classes_`'s order) and its words, each with
        p(class) - p(class | the text without that word), toward class `target[i]` (as `ImageClassifier.explain` takes it; default: the
        class it says); positive words pushed toward that class (word occlusion)."""
        import contextlib

        from .mistakes import word_evidence
        from .trainer import predict_proba

        self._check_fitted()
        x, texts = self._encode(texts)
        tf = self.inputs_.eval_transform()
        proba = predict_proba(self.model_, x, tf, 64, contextlib.nullcontext).numpy()
        target = self._targets(target, proba)
        proba_fn = lambda t: predict_proba(self.model_, self._tokens(t), tf, 64, contextlib.nullcontext).numpy()  # noqa: E731
        return self._public(proba), word_evidence(proba_fn, texts, target)
