"""The Python API, estimator-style (scikit-learn's conventions: the constructor stores its arguments,
`fit` does the work and returns self, learned state ends with an underscore).

    clf = ImageClassifier(model="efficientnet_lite0", strategy="lp_ft").fit("path/to/images")
    clf.predict(["a.jpg", "b.jpg"]); clf.evaluate("path/to/test"); clf.save("run/")
    clf = ImageClassifier.load("run/")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import FLAT, RunConfig, config_from_dict, replace
from .data import IMAGE_SUFFIXES, ImageSet, decode_images
from .errors import UserError, did_you_mean


class ImageClassifier:
    """Fine-tune a pretrained image backbone with a new head. Keyword arguments are the settings of
    `transferkit fit` by their flag names (model, strategy, epochs, batch_size, lr, seed, head, ...)."""

    def __init__(self, model: str = "efficientnet_lite0", strategy: str = "lp_ft", **settings):
        for k in settings:
            if k not in FLAT:
                raise UserError(f"unknown setting {k!r}{did_you_mean(k, FLAT)}")
        self.model = model
        self.strategy = strategy
        self.settings = settings

    def get_config(self, data: str | None = None) -> RunConfig:
        return replace(RunConfig(), model=self.model, strategy=self.strategy, data=data, **self.settings)

    def fit(self, data: str, *, out: str | Path | None = None, overwrite: bool = False, quiet: bool = True) -> ImageClassifier:
        from . import report
        from .fit import fit

        r = fit(self.get_config(str(data)), out, overwrite=overwrite, console=report.console(quiet=quiet))
        self._set_fitted(r.model, r.classes, r.preprocess, r.config)
        self.metrics_, self.history_, self.run_dir_ = r.metrics, r.history, r.run_dir
        return self

    def _set_fitted(self, model, classes, preprocess, config) -> None:
        self.model_, self.classes_, self.preprocess_, self.config_ = model, list(classes), preprocess, config

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise UserError("this ImageClassifier is not fitted yet: call fit() or ImageClassifier.load()")

    def _decode(self, images) -> tuple:
        """Paths, a folder of images, or HxWx3 uint8 arrays -> (uint8 tensor, source names)."""
        if isinstance(images, (str, Path)):
            p = Path(images)
            images = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [str(p)]
            if not images:
                raise UserError(f"no image files in {p}")
        sources = [str(s) if isinstance(s, (str, Path)) else s for s in images]
        for s in sources:
            if isinstance(s, str) and not Path(s).is_file():
                raise UserError(f"image not found: {s}")
        s = ImageSet(sources, np.zeros(len(sources), dtype=int), self.classes_)
        u8, _, _ = decode_images(s, self.preprocess_.resize_size, self.preprocess_.interpolation)
        names = [x if isinstance(x, str) else f"array[{i}]" for i, x in enumerate(sources)]
        return u8, names

    def predict_proba(self, images) -> np.ndarray:
        from .fit import proba_of_images

        self._check_fitted()
        u8, _ = self._decode(images)
        return proba_of_images(self.model_, self.preprocess_, u8)

    def predict(self, images) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(images).argmax(1)]

    def evaluate(self, data: str) -> dict:
        """Metrics on a labelled data spec: its test/ split if it has one, else val/, else all of it."""
        from .evaluate import evaluate_model

        self._check_fitted()
        return evaluate_model(self.model_, self.classes_, self.preprocess_, str(data), config=self.config_)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from .fit import model_meta, write_model
        from .rundir import RunDir

        self._check_fitted()
        rd = RunDir(path, overwrite=overwrite).create()
        write_model(rd, self.model_, model_meta(self.model_, self.classes_, self.preprocess_, self.config_))
        rd.write_yaml("config.yaml", self.config_.to_dict())
        rd.finalize()
        return rd.path

    @classmethod
    def load(cls, path: str | Path) -> ImageClassifier:
        from .backbones import Preprocess
        from .fit import load_model

        model, meta = load_model(path)
        cfg_file = Path(path) / "config.yaml"
        import yaml

        cfg = config_from_dict(yaml.safe_load(cfg_file.read_text())) if cfg_file.is_file() else RunConfig()
        clf = cls(model=cfg.model.name, strategy=cfg.strategy.name)
        clf._set_fitted(model, meta["classes"], Preprocess.from_dict(meta["preprocess"]), cfg)
        return clf
