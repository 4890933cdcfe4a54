"""From what the user points at to decoded, labelled images.

`load_image_data(spec)` understands:
- a folder with one subfolder per class;
- a folder with `train/` and `val/` (optionally `test/`) subfolders of that shape;
- a CSV file with `path,label` columns (relative paths are relative to the CSV);
- `digits`: scikit-learn's 8x8 handwritten digits (built in, no download).

Every image is decoded once into a uint8 tensor, resized so its shorter side is the backbone's
`resize_size` and centre-cropped to a square of that size. Evaluation crops the centre `input_size`
from it (exactly the usual resize + centre-crop); training takes random resized crops from it.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError, warn_user

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BUILTIN = ("digits",)


def is_builtin(spec: str) -> bool:
    """Whether --data names built-in data (digits, digits:SUBSET) rather than a path."""
    return spec == "digits" or spec.startswith("digits:")


@dataclass
class ImageSet:
    """Images (file paths or in-memory HxWx3 uint8 arrays) with integer labels."""

    sources: list  # str paths or np.ndarray images
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray | None = None  # --group-column (CSV data): each image's group (site, device, ...)

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, idx) -> ImageSet:
        idx = np.asarray(idx, dtype=int)
        return ImageSet([self.sources[i] for i in idx], self.labels[idx], self.classes, self.groups[idx] if self.groups is not None else None)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels.tolist())
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


def fingerprints(sources: list, text: bool) -> list[str | None]:
    """A short content hash of each example: a text's stripped characters, an image file's bytes, an
    array's pixels (None for a file that cannot be read). A run keeps its training split's, so that
    `evaluate` knows its training examples under another path (a copy, a re-export)."""
    import hashlib

    def one(x) -> str | None:
        h = hashlib.blake2b(digest_size=8)
        if text:
            h.update(str(x).strip().encode("utf-8", "surrogatepass"))
        elif isinstance(x, np.ndarray):
            h.update(f"{x.shape}{x.dtype}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        else:
            try:
                h.update(Path(x).read_bytes())
            except OSError:
                return None
        return h.hexdigest()

    if text or len(sources) < 64:
        return [one(x) for x in sources]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # file reads and hashing release the GIL
        return list(pool.map(one, sources, chunksize=64))


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    classes: list[str]
    source: str
    val_given: bool  # True when the user gave the validation split, False when we drew it
    flip_ok: bool = True  # horizontal flips preserve labels (not for digits)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- listing

# the data of an image model that looks like texts: the model decides the modality, so say which to choose
TEXT_HINT = " (texts need a text model: fit one with --model minilm_l6, hf:NAME or dir:PATH)"


SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"), "test": ("test", "testing")}


def split_dirs(path: Path, *, need_train: bool = True) -> dict[str, Path]:
    """A data root's split folders by their split (train, val, test), whatever their case or usual
    name (`Train/`, `valid/`, `validation/`): `valid/` was skipped in silence and `Train/` + `Val/`
    read as two classes named Train and Val. A folder `train/` makes a split layout, as it always
    did; otherwise the subfolders are splits only when every one has a split's name and holds
    folders (its classes): `Train/` beside `Car/`, or `dev/` and `test/` of images, are classes.
    Empty when there are no splits (and, with `need_train`, without a training split)."""
    subs = [d for d in sorted(path.iterdir()) if d.is_dir() and not _hidden(d.name)] if path.is_dir() else []
    split_of = {d: next((k for k, names in SPLIT_NAMES.items() if d.name.lower() in names), None) for d in subs}
    if not (path / "train").is_dir():
        if not subs or any(k is None for k in split_of.values()) or not all(any(c.is_dir() for c in d.iterdir()) for d in subs):
            return {}
    found: dict[str, list[Path]] = {}
    for d, k in split_of.items():
        if k is not None:
            found.setdefault(k, []).append(d)
    for split, dirs in found.items():
        if len(dirs) > 1:
            raise UserError(f"{path}: {' and '.join(d.name + '/' for d in dirs)} are both a {split} split; keep one")
    if need_train and "train" not in found:
        return {}
    return {k: v[0] for k, v in found.items()}


def load_image_data(spec: str, *, val_fraction: float = 0.2, seed: int = 0, group_column: str | None = None, encoding: str = "auto",
                    label_column: str | None = None, delimiter: str | None = None) -> DataSplits:
    """Resolve a data spec into train / val (/ test) splits. Nothing is decoded yet."""
    if is_builtin(spec):
        return _digits(val_fraction, seed, spec.partition(":")[2])
    path = Path(spec)
    if not path.exists():
        raise UserError(f"data not found: {spec} (give a folder of class subfolders, a CSV, or one of: {', '.join(BUILTIN)})")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UserError(f"{spec} is a file but not a .csv; give a folder of class subfolders or a CSV with path,label columns{TEXT_HINT}")
        full = _read_csv(path, group_column, encoding, label_column=label_column, delimiter=delimiter)
        classes = full.classes
        tr, va = stratified_split(full.labels, val_fraction, seed)
        return DataSplits(full.subset(tr), full.subset(va), None, classes, str(path), val_given=False)
    if dirs := split_dirs(path):
        train = _read_folder(dirs["train"])
        classes = train.classes
        if "val" not in dirs:
            tr, va = stratified_split(train.labels, val_fraction, seed)
            train, val = train.subset(tr), train.subset(va)
            given = False
        else:
            val = _read_folder(dirs["val"], classes=classes)
            given = True
        test = _read_folder(dirs["test"], classes=classes) if "test" in dirs else None
        return DataSplits(train, val, test, classes, str(path), val_given=given)
    full = _read_folder(path)
    tr, va = stratified_split(full.labels, val_fraction, seed)
    return DataSplits(full.subset(tr), full.subset(va), None, full.classes, str(path), val_given=False)


def copy_notes(train: list, val: list, train_labels, val_labels, classes: list[str], sources: list, unit: str,
               test: list | None = None, test_labels=None) -> list[str]:
    """What a split's copies say (`fingerprints` of each split): validation (or test) examples whose
    content is also a training example's make their scores optimistic, and one content under two
    labels cannot be learned. `sources` (train, then val, then test) names an example of the second."""
    seen = {f for f in train if f}
    notes = []
    for name, prints in (("validation", val), ("test", test or [])):
        n = sum(f in seen for f in prints if f)
        if n:
            notes.append(f"{n} of the {len(prints)} {name} {unit} have the same content as a training example: the {name} scores "
                         f"{'(and the best epoch chosen on them) ' if name == 'validation' else ''}are optimistic; remove the copies for an honest estimate")
    labels_of: dict[str, set[int]] = {}
    first: dict[str, int] = {}
    labels = [*np.asarray(train_labels).tolist(), *np.asarray(val_labels).tolist(), *(np.asarray(test_labels).tolist() if test else [])]
    for i, (f, y) in enumerate(zip([*train, *val, *(test or [])], labels)):
        if f:
            labels_of.setdefault(f, set()).add(int(y))
            first.setdefault(f, i)
    twice = [f for f, ys in labels_of.items() if len(ys) > 1]
    if twice:
        f = twice[0]
        src = sources[first[f]]
        what = f"#{first[f]}" if isinstance(src, np.ndarray) else repr(str(src)[:80])
        notes.append(f"{len(twice)} {unit[:-1]}(s) appear under more than one label (same content): {what} is "
                     f"{' and '.join(repr(classes[y]) for y in sorted(labels_of[f]))}; no model can get both right")
    return notes


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split; every class keeps at least one example on each side."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = min(max(1, int(round(len(idx) * val_fraction))), len(idx) - 1)
        va.extend(idx[:n_val])
        tr.extend(idx[n_val:])
    return np.sort(np.array(tr, dtype=int)), np.sort(np.array(va, dtype=int))


SKIPPED_FOLDERS = ("__MACOSX",)  # the resource forks a zip made on macOS carries


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS


def image_files(folder: str | Path) -> list[Path]:
    """The image files under `folder`, at any depth, sorted; hidden files and folders (`.DS_Store`,
    macOS's `._photo.jpg` resource forks, `.git`) and `__MACOSX` are not images and are left out."""
    folder = Path(folder)  # the README points users here (predict_proba's order): a str was an AttributeError
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(_hidden(part) for part in p.relative_to(folder).parts))


def _read_folder(root: Path, classes: list[str] | None = None) -> ImageSet:
    check = classes is None  # the training (or only) split; val/test may hold fewer per class
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not _hidden(d.name))
    if not subdirs:
        raise UserError(f"{root} has no class subfolders (expected {root}/<class>/<image files>)")
    if classes is not None:
        extra = sorted(set(subdirs) - set(classes))
        if extra:
            known = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")  # Ants/ against ants/: the case shows
            raise UserError(f"{root} has classes that are not in the training data: {', '.join(extra)} (training classes: {known})")
    from .text_data import _classes

    classes = classes or _classes(subdirs)  # 2 before 10, as a CSV's labels are ordered (folders were ordered as text: 10, 100, 2)
    sources, labels = [], []
    for ci, name in enumerate(classes):
        d = root / name
        files = image_files(d) if d.is_dir() else []
        sources += [str(p) for p in files]
        labels += [ci] * len(files)
    if not sources:
        raise UserError(f"{root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = ImageSet(sources, np.array(labels, dtype=int), classes)
    if check:
        check_counts(out, str(root))
    return out


PATH_NAMES = ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img", "img_path")


def _read_csv(path: Path, group_column: str | None = None, encoding: str = "auto", *, check: bool = True, label_column: str | None = None,
              group_optional: bool = False, delimiter: str | None = None) -> ImageSet:
    """Images listed in a CSV: a column of paths (`path`, or `file`, `filename`, `image`, ...;
    relative to the CSV's folder) and one of labels (`label`, `class`, `category`, ..., or
    `label_column`); `group_optional`: groups only where the CSV has `group_column` (data to score)."""
    import io

    from .text_data import LABEL_NAMES, _decode, _delimiter

    text = _decode(path.read_bytes(), path, encoding, "an image CSV lists path,label rows")  # auto: UTF-8 (BOM or not) or UTF-16 with a BOM; else a clear error
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(text, path, delimiter)))  # ',' unless it cannot be (a ';' CSV), or as given
    fields = list(rows[0].keys()) if rows else []
    if not rows:
        raise UserError(f"{path} has no rows")
    if group_optional and group_column not in fields:
        group_column = None

    def column(names: tuple[str, ...]) -> str | None:
        lower = {str(f).strip().lower(): f for f in fields if f is not None}
        return next((lower[n] for n in names if n in lower), None)

    if label_column is not None and column((label_column.lower(),)) is None:
        raise UserError(f"{path}: no label column {label_column!r}; columns found: {', '.join(fields)}")
    pc, lc = column(PATH_NAMES), column((label_column.lower(),) if label_column else LABEL_NAMES)
    missing = [what for what, c in (("path", pc), ("label", lc)) if c is None] + ([group_column] if group_column and group_column not in fields else [])
    if missing:
        hint = ""
        if pc is None:
            hint += f" (image paths: a column named one of {', '.join(PATH_NAMES)})"
        if lc is None:
            hint += " (labels: name the column with --label-column)"
        shown = ", ".join(str(f).replace("\t", "\\t") for f in fields)  # a TSV's header read as one column had a raw tab in the message
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; found: {shown}{hint}" + (TEXT_HINT if pc is None else ""))
    if group_column in (pc, lc):  # one group per image, or per-class recall again
        raise UserError(f"{path}: --group-column {group_column} names the {'path' if group_column == pc else 'label'} column; "
                        f"name a column of groups (site, device, source, ...): {', '.join(fields)}")
    sources, names, absent = [], [], []
    for i, r in enumerate(rows, start=2):
        p = Path(r[pc] or "")
        p = p if p.is_absolute() else path.parent / p
        if not r[pc] or not p.is_file():
            absent.append(f"row {i}: {r[pc]!r}")
        sources.append(str(p))
        names.append(str(r[lc]).strip())
    unlabelled = [f"row {i}: {r[pc]!r}" for i, r in enumerate(rows, start=2) if r[lc] is None or not str(r[lc]).strip()]
    if unlabelled:  # an empty cell was a class named '' (a `p_` column in predictions)
        raise UserError(f"{path}: {len(unlabelled)} row(s) with an empty label in column {lc!r}: {'; '.join(unlabelled[:5])}"
                        + (" ..." if len(unlabelled) > 5 else "") + " (label them, or remove the rows)")
    if absent:
        where = f" (a relative path is read from the CSV's folder, {path.parent}/)" if any(not Path(r[pc] or "").is_absolute() for r in rows) else ""
        raise UserError(f"{path}: {len(absent)} image path(s) do not exist{where}: {'; '.join(absent[:5])}" + (" ..." if len(absent) > 5 else ""))
    from .text_data import _classes

    classes = _classes(names)  # 2 before 10, as a text CSV's labels (and fit(X, y)'s ints) are ordered
    index = {c: i for i, c in enumerate(classes)}
    if group_column:  # a group named '' ("worst group:  (29.7 points below the best)"), as an empty label is refused
        blank = [f"row {i}: {r[pc]!r}" for i, r in enumerate(rows, start=2) if r[group_column] is None or not str(r[group_column]).strip()]
        if blank:
            raise UserError(f"{path}: {len(blank)} row(s) with an empty group in column {group_column!r}: {'; '.join(blank[:5])}"
                            + (" ..." if len(blank) > 5 else "") + " (name their group, or remove the rows)")
    groups = np.array([str(r[group_column]).strip() for r in rows]) if group_column else None
    out = ImageSet(sources, np.array([index[n] for n in names], dtype=int), classes, groups)
    if check:  # training data; data to score may hold one image of a class, or one class
        check_counts(out, str(path))
    return out


def check_counts(s: ImageSet, where: str) -> None:
    """Training data needs two or more classes and at least 2 images in each."""
    few = {c: n for c, n in s.counts().items() if n < 2}
    if few:
        raise UserError(f"{where}: every class needs at least 2 images; too few in " + ", ".join(f"{c!r} ({n})" for c, n in few.items()))
    if len(s.classes) < 2:
        raise UserError(f"{where}: found only one class ({s.classes[0]!r}); classification needs at least 2")


def _digits(val_fraction: float, seed: int, which: str = "") -> DataSplits:
    """scikit-learn's digits; `which` ("0-4", "5-9", "3,8") keeps those digits only (a source and a
    target task from one dataset, as in the transfer-learning articles)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = list(range(10))
    if which:
        try:
            keep = sorted({k for part in which.split(",") for k in (range(int(part.split("-")[0]), int(part.split("-")[1]) + 1) if "-" in part else [int(part)])})
        except ValueError:
            keep = []
        if len(keep) < 2 or not all(0 <= k <= 9 for k in keep):
            raise UserError(f"digits:{which}: give two or more digits 0-9, as a range (digits:5-9) or a list (digits:3,8)")
    m = np.isin(d.target, keep)
    imgs = (d.images[m] * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    rgb = [np.repeat(im[:, :, None], 3, axis=2) for im in imgs]
    index = {k: i for i, k in enumerate(keep)}
    full = ImageSet(rgb, np.array([index[t] for t in d.target[m]], dtype=int), [str(k) for k in keep])
    tr, va = stratified_split(full.labels, val_fraction, seed)
    name = f"digits:{which}" if which else "digits"
    return DataSplits(full.subset(tr), full.subset(va), None, full.classes, name, val_given=False, flip_ok=False)


# -------------------------------------------------------------------------------------- decoding

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def _to_square(img: Image.Image, size: int, interpolation: str) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop a `size` x `size` square (as uint8 HxWx3)."""
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    left, top = (nw - size) // 2, (nh - size) // 2
    resample = _RESAMPLE.get(interpolation, Image.BICUBIC)
    if nw * nh > 4 * size * size:
        # a long strip (1 x 20,000 px, a 100-byte PNG) was resized whole first: 256 x 5,120,000 pixels, 6 GB
        # and 21 s. Only the square's box is resampled, on the same grid (pixels within 1 of the full resize)
        box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
        return np.asarray(img.resize((size, size), resample, box=box), dtype=np.uint8)
    img = img.resize((nw, nh), resample)
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixels of any depth as 8 bits, one rule for files and for arrays. PIL's convert("RGB") clips a
    16-bit image (microscopy, medical) to 255, mostly white; here 16-bit integers are scaled by 1/257,
    the full range onto 0-255 (as torchvision's ToDtype(scale=True) and scikit-image's img_as_ubyte
    do), and wider integers the same way when their values go beyond 255. Booleans become 0 / 255,
    floats in [0, 1] are scaled by 255; everything else is clipped to 0-255."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    f = a.astype(np.float64)
    # 16-bit unsigned: the full range, always; signed or wider: 0-255 pixels stay (an int16 copy of a
    # uint8 photo was divided by 257, nearly black, in silence), larger values are scaled
    if a.dtype.kind in "ui" and ((a.dtype.kind == "u" and a.dtype.itemsize == 2) or (f.size and f.max() > 255)):
        f = f / 257.0
    elif a.dtype.kind == "f" and f.size and f.min() >= 0 and f.max() <= 1:
        f = f * 255.0
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """An RGB image as a person sees the file: turned as its EXIF orientation says (phone photos),
    with more-than-8-bit pixels scaled to 8 bits (`_to_uint8`) instead of clipped."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block: the pixels are still good, keep them as stored
        pass
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = Image.fromarray(_to_uint8(np.asarray(im)))
    return im.convert("RGB")


def as_image_array(obj, where: str = "image") -> np.ndarray:
    """A PIL image, a numpy array or a torch tensor as an HxW or HxWxC uint8 array, scaled as a file's
    pixels are (`_to_uint8`); a (C, H, W) tensor (torchvision's layout) is moved to (H, W, C).
    Anything else is a UserError that names `where`."""
    if isinstance(obj, Image.Image):
        return np.asarray(_to_rgb(obj))
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        if obj.ndim == 3 and obj.shape[0] in (1, 3) and obj.shape[-1] not in (1, 3, 4):
            obj = obj.permute(1, 2, 0)
        obj = obj.numpy()
    if not isinstance(obj, np.ndarray):
        raise UserError(f"{where}: expected a file path, a PIL image or an HxWx3 array, got {type(obj).__name__}")
    a = obj[..., 0] if obj.ndim == 3 and obj.shape[-1] == 1 else obj
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or min(a.shape[:2]) < 1:
        raise UserError(f"{where}: an image array must be HxW, HxWx3 or HxWx4, got shape {tuple(obj.shape)}")
    return pixels_to_uint8(a, where)


def pixels_to_uint8(a: np.ndarray, where: str) -> np.ndarray:
    """An array of pixels (one image, or a batch: one scale for all of it) as uint8, after refusing
    what no image holds (an unsupported type, NaN, `check_pixel_range`)."""
    if a.dtype.kind not in "buif":
        raise UserError(f"{where}: unsupported image array type {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise UserError(f"{where}: the image array holds NaN or infinite values")
    check_pixel_range(a, where)
    return _to_uint8(a)


def check_pixel_range(a: np.ndarray, where: str) -> None:
    """Refuse pixels no image holds: negative values (a mean/std-normalised tensor, which clipping
    would turn black), floats above 255, and floats whose largest value is above 1 but at most 5 (what
    Normalize makes of a bright image; as 0-255 values it would be nearly black). Scaling is
    transferkit's job, with the model's own mean and std."""
    if a.dtype.kind in "if" and a.size:
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or (a.dtype.kind == "f" and (hi > 255 or 1 < hi <= 5)):
            raise UserError(
                f"{where}: pixel values from {lo:.3g} to {hi:.3g}. Give images as stored (uint8 0-255, or floats in [0, 1]), "
                "not normalised: transferkit resizes and normalises them as the model needs"
            )
        if 5 < hi <= 16 and np.array_equal(a, np.round(a)):  # (signed ints and floats: uint8 is stored pixels, uint16 scaled by 257)
            # one text for every image (a list of 1,797 digits warns once)
            warn_user("image pixel values no higher than 16 are read as 0-255 (nearly black); scikit-learn's load_digits "
                      "images run 0-16: scale them first, images * (255 / 16)")


def _decode_one(src, size: int, interpolation: str):
    try:
        if isinstance(src, np.ndarray):
            img = Image.fromarray(src).convert("RGB")
        else:
            with warnings.catch_warnings():
                # over 89 MP PIL warns of a decompression bomb (a raw line on stderr); such a photo
                # decodes here at reduced scale, and over 178 MP PIL refuses it (an unreadable image)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(src) as im:
                    im.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
                    img = _to_rgb(im)
        return _to_square(img, size, interpolation), None
    except UnidentifiedImageError as e:  # PIL's "cannot identify image file": said as what the file is where that is plain
        return None, f"{src}: {_not_an_image(src) or f'{type(e).__name__}: {str(e)[:120]}'}"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, f"{src}: {type(e).__name__}: {str(e)[:120]}"


def _not_an_image(src) -> str | None:
    """What a file PIL cannot identify is, when that is plain: empty, or text."""
    from .text_data import _binary

    try:
        head = Path(src).read_bytes()[:4096]
    except (OSError, TypeError):
        return None
    if not head:
        return "an empty file (0 bytes), not an image"
    return None if _binary(head) else "a text file, not an image"


DECODE_VERSION = 2  # 2: EXIF orientation applied, 16-bit images scaled (not clipped)
_CACHE_DECODED = contextvars.ContextVar("transferkit_cache_decoded", default=True)


@contextlib.contextmanager
def decoded_cache(on: bool):
    """Whether decode_images keeps what it decodes in the cache, inside the block. Off for files that
    are never read again: fit(X, y)'s temporary PNG copies of images in memory, whose cache entries
    (two per fit, keyed by paths deleted on return) were never hit."""
    token = _CACHE_DECODED.set(on)
    try:
        yield
    finally:
        _CACHE_DECODED.reset(token)


def decode_images(s: ImageSet, size: int, interpolation: str = "bicubic", *, skip_bad: bool = False, progress=None, cache: bool | None = None):
    """Decode `s` into a (N, 3, size, size) uint8 tensor. Unreadable files fail the run with their
    names listed, or are dropped (with the returned list naming them) when `skip_bad` is set.

    Images given as files are decoded once into a memory-mapped cache file (keyed by each file's
    path, size and modification time, and by `size` and `interpolation`); the tensor returned is a
    copy-on-write view of that file, so the decoded set lives in the page cache, not in the Python
    heap, and a second run (a fold, a trial, a ranking) decodes nothing. `cache=False` (or inside
    `decoded_cache(False)`) decodes into memory and keeps nothing."""
    if (_CACHE_DECODED.get() if cache is None else cache) and s.sources and all(isinstance(x, str) for x in s.sources):
        try:
            mm, errors = _decoded_file(s, size, interpolation, progress)
        except OSError as e:  # no room for the cache file: decode into memory instead
            warn_user(f"decoded-image cache not written ({e}); decoding into memory")
            mm, errors = _decode_in_memory(s, size, interpolation, progress)
    else:
        mm, errors = _decode_in_memory(s, size, interpolation, progress)
    bad = [e for e in errors if e]
    if bad and not skip_bad:
        raise UserError(
            f"{len(bad)} image file(s) cannot be read:\n  " + "\n  ".join(bad[:10]) + ("\n  ..." if len(bad) > 10 else "")
            + "\nremove them, or pass --skip-bad-images (skip_bad_images=True in Python) to leave them out"
        )
    keep = [i for i, e in enumerate(errors) if not e]
    images = torch.from_numpy(mm) if len(keep) == len(errors) else torch.from_numpy(np.ascontiguousarray(mm[keep]))
    return images, s.subset(keep), bad


def _decode_in_memory(s: ImageSet, size: int, interpolation: str, progress):
    out = np.zeros((len(s), 3, size, size), np.uint8)
    return out, _decode_into(out, s.sources, size, interpolation, progress)


def _decode_into(out, sources, size: int, interpolation: str, progress) -> list[str | None]:
    def work(i):
        arr, err = _decode_one(sources[i], size, interpolation)
        if arr is not None:
            out[i] = arr.transpose(2, 0, 1)
        return err

    n_workers = min(8, os.cpu_count() or 1)
    errors = []
    pool = ThreadPoolExecutor(n_workers)  # PIL releases the GIL while decoding and resizing
    try:
        for err in pool.map(work, range(len(sources))):
            errors.append(err)
            if progress is not None:
                progress(1)  # may raise (a stop request): the images not yet started are dropped below
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return errors


def _crc32(a: np.ndarray) -> int:
    """zlib's CRC-32 of an array's bytes, 16 MB at a time (2.4 GB/s on the 2-core CPU: 15 ms for
    hymenoptera's 244 images at 224 px; a hash of its own was not worth its time here)."""
    import zlib

    flat, crc, step = a.reshape(-1), 0, 1 << 24
    for i in range(0, flat.size, step):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(flat[i:i + step])), crc)
    return crc


_VERIFIED: dict[str, tuple] = {}  # cache entry -> (inode, size, mtime) when this process last checked (or wrote) its CRC-32


def _stat_key(path) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _decoded_file(s: ImageSet, size: int, interpolation: str, progress):
    import hashlib
    import json

    from .cache import cache_dir, enforce_limit, mark_used

    h = hashlib.sha256(json.dumps([DECODE_VERSION, size, interpolation]).encode())
    for src in s.sources:
        st = os.stat(src)
        h.update(f"{os.path.abspath(src)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = h.hexdigest()[:32]
    folder = cache_dir() / "images"
    data, meta = folder / f"{key}.u8", folder / f"{key}.json"
    shape = (len(s), 3, size, size)
    if data.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info["shape"] == list(shape) and data.stat().st_size == int(np.prod(shape)):
                out = np.memmap(data, dtype=np.uint8, mode="c", shape=shape)
                # its pixels as written: an entry overwritten in place (zeros of the right size) was trusted, and a
                # fit trained on black images (an older entry, without a checksum, is decoded again once)
                # checked once a process while the file stays as it was: a search's every fold hit it again (1.2 s for 3 GB each)
                if _VERIFIED.get(str(data)) == _stat_key(data) or info.get("crc32") == _crc32(out):
                    if progress is not None:
                        progress(len(s))
                    mark_used(data, meta)
                    _VERIFIED[str(data)] = _stat_key(data)  # (after mark_used, which sets its time)
                    enforce_limit(keep=(data, meta))  # the limit may have been lowered since
                    return out, info["errors"]
                del out
        except (ValueError, KeyError, TypeError, OSError):  # TypeError: JSON of another shape (`[1, 2]`), a traceback
            pass  # a damaged entry is rebuilt
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.u8.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:  # reserve the space first: a full disk is an OSError here, not a SIGBUS later
            nbytes = int(np.prod(shape))
            if hasattr(os, "posix_fallocate") and nbytes:
                os.posix_fallocate(f.fileno(), 0, nbytes)
            else:
                f.truncate(nbytes)
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
        errors = _decode_into(mm, s.sources, size, interpolation, progress)
        mm.flush()
        crc = _crc32(mm)
        del mm
        os.replace(tmp, data)
        _VERIFIED[str(data)] = _stat_key(data)
        from .rundir import atomic_write_bytes

        where = os.path.commonpath([os.path.abspath(src) for src in s.sources]) if len(s) else ""  # for `transferkit cache` to say
        atomic_write_bytes(meta, json.dumps({"shape": list(shape), "errors": errors, "where": where, "interpolation": interpolation,
                                                 "crc32": crc}).encode())
    finally:
        tmp.unlink(missing_ok=True)
    out = np.memmap(data, dtype=np.uint8, mode="c", shape=shape)  # mapped before eviction may run: stays readable
    enforce_limit(keep=(data, meta))
    return out, errors
