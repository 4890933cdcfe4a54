"""From a text file the user points at to labelled texts.

`load_text_data(spec, ...)` understands:
- one CSV / TSV / delimited text file with a text column and a label column (header or not; the
  delimiter, the columns and the header are detected unless given), split stratified into train/val;
- a folder holding `train.*` and `val.*` or `dev.*` (and optionally `test.*`) files of that shape.

Encoding: UTF-8 (with or without a BOM), UTF-16 with a BOM, or what `encoding` names. A file in
anything else is refused with the offset of the first bad byte. Every row is checked: a missing field,
an empty text or an empty label is an error naming the file and the row.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

TEXT_SUFFIXES = {".csv", ".tsv", ".txt", ".tab", ""}
TEXT_NAMES = ("text", "sentence", "sentence1", "review", "message", "sms", "content", "body", "document", "comment", "tweet")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "y")
DELIMITERS = {",": ",", "\t": "\t", "tab": "\t", "\\t": "\t", ";": ";", "|": "|"}
MAX_FIELD = 16 * 1024 * 1024  # a 1 MB text is valid; csv's default limit is 128 KB


@dataclass
class TextSet:
    """Texts with integer labels; the text counterpart of data.ImageSet."""

    sources: list[str]
    labels: np.ndarray
    classes: list[str]
    rows: list[str] | None = None  # where each text came from ("file:row"), for messages
    groups: np.ndarray | None = None  # --group-column: each example's group (site, device, ...)

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, idx) -> TextSet:
        idx = np.asarray(idx, dtype=int)
        return TextSet([self.sources[i] for i in idx], self.labels[idx], self.classes, [self.rows[i] for i in idx] if self.rows else None,
                       self.groups[idx] if self.groups is not None else None)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels.tolist())
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


def is_text_spec(spec: str) -> bool:
    """A folder with a train.csv/.tsv file, or a delimited file whose first line names a text column
    and no `path` column (image CSVs are `path,label`), or one without a known header whose first
    lines name no image files."""
    p = Path(spec)
    if p.is_dir():
        return _find(p, "train") is not None and not (p / "train").is_dir()
    if not (p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        return False
    from .data import IMAGE_SUFFIXES, PATH_NAMES

    with open(p, "rb") as f:
        head = f.read(65536)
    utf16 = head.startswith((b"\xff\xfe", b"\xfe\xff"))  # as _decode reads a file: UTF-16 with its byte-order mark, else UTF-8
    lines = head.decode("utf-16" if utf16 else "utf-8-sig", "replace").lower().splitlines()[:20]
    cells = [{c.strip().strip('"') for c in ln.replace("\t", ",").replace(";", ",").replace("|", ",").split(",")} for ln in lines if ln.strip()]
    if not cells or cells[0] & set(PATH_NAMES):
        return False
    if cells[0] & set(TEXT_NAMES):
        return True
    # no header transferkit knows (the SMS Spam Collection: label<TAB>text): texts unless its cells
    # name image files (an image list is read only with a header, so a file without one is texts)
    return not any(c.endswith(tuple(IMAGE_SUFFIXES)) for row in cells for c in row)


def read_table(path: Path, *, delimiter: str | None = None, encoding: str = "auto", text_column: str | None = None, label_column: str | None = None,
               group_column: str | None = None, group_optional: bool = False, classes: list[str] | None = None,
               ) -> tuple[list[str], list[str], list[str], list[str] | None]:
    """(texts, labels, row names, groups or None) from one delimited file; `group_optional`: groups
    only where the file has `group_column` (data to score), else the column is required; `classes`
    (a run's, for data to score): a first row over a column of them is a header."""
    raw = path.read_bytes()
    text = _decode(raw, path, encoding)
    if not text.strip():
        raise UserError(f"{path} is empty")
    delim = _delimiter(text, path, delimiter)
    csv.field_size_limit(MAX_FIELD)
    try:
        rows = _records(text, delim)
    except csv.Error as e:
        raise UserError(f"{path}: not a readable {_dname(delim)}-delimited file ({e})") from None
    first = [c.strip() for c in rows[0]]
    named = any(c is not None and not str(c).isdigit() for c in (text_column, label_column))  # a position names no header
    has_header = named or _is_header(first, rows[1:], classes)
    if has_header:
        header, body, start = first, rows[1:], 2
    else:
        header, body, start = [f"column{i + 1}" for i in range(len(first))], rows, 1
    ti = _column(header, text_column, TEXT_NAMES, path, "text")
    li = _column(header, label_column, LABEL_NAMES, path, "label")
    if ti is None or li is None:
        ti, li = _guess_columns(header, body, ti, li, path, delim)
    if ti == li:
        raise UserError(f"{path}: the text and the label column are the same ({header[ti]!r})")
    gi = None
    if group_column:
        try:
            gi = _column(header, group_column, (), path, "group")
        except UserError:
            if not group_optional:
                raise
        if gi in (ti, li):  # accepted: 52 "groups" of one message each, printed whole, or per-class recall again
            raise UserError(f"{path}: --group-column {group_column} names the {'text' if gi == ti else 'label'} column; "
                            f"name a column of groups (site, device, source, ...): {', '.join(repr(h) for h in header)}")
    texts, labels, names, groups = [], [], [], []
    width = len(header)
    for j, r in enumerate(body):
        where = f"{path}:{start + j}"
        if len(r) != width:
            raise UserError(f"{where}: {len(r)} field(s) where the header has {width} ({_dname(delim)}-delimited; quote fields that contain the delimiter)")
        t, lab = r[ti], r[li].strip()
        if not t.strip():
            raise UserError(f"{where}: empty text in column {header[ti]!r}")
        if not lab:
            raise UserError(f"{where}: empty label in column {header[li]!r}")
        texts.append(t)
        labels.append(lab)
        names.append(where)
        if gi is not None:
            if not r[gi].strip():  # a group named '' ("worst group:  (29.7 points below the best)")
                raise UserError(f"{where}: empty group in column {header[gi]!r} (name its group, or remove the row)")
            groups.append(r[gi].strip())
    if not texts:
        raise UserError(f"{path} has a header but no rows")
    return texts, labels, names, (groups if gi is not None else None)


def load_text_data(spec: str, *, val_fraction: float = 0.2, seed: int = 0, text_column=None, label_column=None, delimiter=None, encoding: str = "auto",
                   group_column=None):
    from .data import DataSplits, stratified_split

    p = Path(spec)
    kw = dict(delimiter=delimiter, encoding=encoding, text_column=text_column, label_column=label_column, group_column=group_column)
    if not p.exists():
        raise UserError(f"data not found: {spec} (give a CSV/TSV file with a text and a label column, or a folder with train and val files)")
    if p.is_dir():
        tr = _find(p, "train")
        va = _find(p, "val") or _find(p, "dev")
        te = _find(p, "test")
        if tr is None:
            raise UserError(f"{p}: no train.csv / train.tsv file in this folder")
        parts = {"train": read_table(tr, **kw)}
        if va is not None:
            parts["val"] = read_table(va, **kw)
        if te is not None:
            parts["test"] = read_table(te, **kw)
        classes = _classes([lab for _, labs, _, _ in parts.values() for lab in labs])
        sets = {k: _textset(v, classes) for k, v in parts.items()}
        train = sets["train"]
        if "val" in sets:
            splits = DataSplits(train, sets["val"], sets.get("test"), classes, str(p), True, flip_ok=False)
        else:
            tr_i, va_i = stratified_split(train.labels, val_fraction, seed)
            splits = DataSplits(train.subset(tr_i), train.subset(va_i), sets.get("test"), classes, str(p), False, flip_ok=False)
    else:
        part = read_table(p, **kw)
        classes = _classes(part[1])
        full = _textset(part, classes)
        _check_classes(full, str(p))
        few = {c: n for c, n in full.counts().items() if n < 2}
        if few:
            first = part[1][0]  # a header nobody named: its label cell is a class of one, in the first row
            raise UserError(f"{p}: every class needs at least 2 texts to split off a validation set; too few in "
                            + ", ".join(f"{c!r} ({n})" for c, n in few.items())
                            + (f" (is the first row a header? {first!r} is its label: name the columns with --text-column and --label-column)"
                               if few.get(first) == 1 else ""))
        tr_i, va_i = stratified_split(full.labels, val_fraction, seed)
        splits = DataSplits(full.subset(tr_i), full.subset(va_i), None, classes, str(p), False, flip_ok=False)
    _check_classes(splits.train, splits.source)
    if len(splits.val) == 0:
        raise UserError(f"{splits.source}: the validation split is empty")
    return splits


def _check_classes(s: TextSet, source: str) -> None:
    counts = s.counts()
    present = [c for c, n in counts.items() if n]
    if len(present) < 2:
        raise UserError(f"{source}: the label column has {len(present)} class ({', '.join(present) or 'none'}); classification needs at least two "
                        "(another column holds the labels? name it with --label-column)")


def _textset(part, classes: list[str]) -> TextSet:
    texts, labels, names, groups = part
    index = {c: i for i, c in enumerate(classes)}
    return TextSet(texts, np.asarray([index[lab] for lab in labels], dtype=np.int64), classes, names, np.asarray(groups) if groups is not None else None)


def _classes(labels: list[str]) -> list[str]:
    uniq = sorted(set(labels))
    try:
        return sorted(uniq, key=float)  # 0, 1, 2, ... 10 in numeric order
    except ValueError:
        return uniq


def _find(folder: Path, stem: str) -> Path | None:
    for suf in (".tsv", ".csv", ".txt"):
        if (folder / f"{stem}{suf}").is_file():
            return folder / f"{stem}{suf}"
    return None


_IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _binary(head: bytes) -> bool:
    """Bytes no text file holds: a NUL, or ones that are not UTF-8 (a character cut at the end aside)."""
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 3
    return False


def _image_kind(raw: bytes, path: Path) -> str | None:
    """The kind of image `raw` is by its first bytes (or its name, for formats without a safe mark)."""
    from .data import IMAGE_SUFFIXES

    kind = next((k for m, k in _IMAGE_MAGIC.items() if raw.startswith(m)), None)
    if kind == "GIF" and not _binary(raw[:512]):  # "GIF89a is the format I like": a text that starts with the mark
        kind = None
    if kind is None and raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        kind = "WebP"
    if kind is None and path.suffix.lower() in IMAGE_SUFFIXES and b"\x00" in raw[:512]:
        kind = path.suffix[1:].upper()
    return kind


def _decode(raw: bytes, path: Path, encoding: str, wanted: str = "a text model reads texts (a CSV/TSV/TXT file, or --text TEXT)") -> str:
    kind = _image_kind(raw, path)
    if kind:  # "not UTF-8 ... name its encoding with --encoding" sent a user to classify an image's bytes as text
        raise UserError(f"{path} is an image ({kind}), not text: {wanted}")
    if encoding != "auto":
        try:
            return raw.decode(encoding)
        except LookupError:
            raise UserError(f"unknown encoding {encoding!r} (try utf-8, utf-16, latin-1, cp1252)") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path} is not valid {encoding}: byte 0x{raw[e.start]:02x} at offset {e.start}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise UserError(f"{path} starts with a UTF-16 byte-order mark but is not valid UTF-16 (offset {e.start})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}). "
            "Convert it to UTF-8 or name its encoding with --encoding (e.g. latin-1, cp1252)"
        ) from None


def _delimiter(text: str, path: Path, given: str | None) -> str:
    if given is not None:
        if given not in DELIMITERS:
            raise UserError(f"unknown delimiter {given!r}; use one of ',', 'tab', ';', '|'")
        return DELIMITERS[given]
    head = text[:65536]
    lines = [ln for ln in head.splitlines()[:50] if ln.strip()]

    def on_every_line(d: str) -> bool:
        return bool(lines) and all(d in ln for ln in lines)

    named = {".tsv": "\t", ".csv": ","}.get(path.suffix.lower())
    if named is not None and (on_every_line(named) or not any(on_every_line(d) for d in ("\t", ",", ";", "|"))):
        return named  # as the name says; another delimiter only where the named one cannot be (a European ';' CSV, a TSV named .csv)
    # The delimiter that appears on every sampled line, the most consistently.
    best, best_score = ",", -1.0
    for d in ("\t", ",", ";", "|"):
        counts = [ln.count(d) for ln in lines]
        if counts and min(counts) > 0:
            score = 1.0 / (1 + np.std(counts)) + (1 if d == "\t" else 0)
            if score > best_score:
                best, best_score = d, score
    return best


def _is_header(first: list[str], body: list[list[str]], classes: list[str] | None = None, also: tuple = ()) -> bool:
    """Whether a file's first row is a header, for `read_table` and `read_text_rows` alike: it holds a
    known column name (or one of `also`), names a column of numbers, or names a column of `classes`."""
    known = {n.lower() for n in (*TEXT_NAMES, *LABEL_NAMES, *also) if n}
    return (any(h.lower() in known for h in first) or _names_numbers(first, body) or _names_labels(first, body, classes)
            or _names_texts(first, body))


def _records(text: str, delim: str) -> list[list[str]]:
    """The non-blank records of a delimited text. A TSV is read without quoting first (SST-2's texts
    hold stray `"`); when that gives rows of unequal widths and reading its quotes gives equal ones,
    the quotes are honoured (a TSV with quoted tabs or newlines was refused, told to quote them)."""
    def read(quoting, strict=False):
        return [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delim, quoting=quoting, strict=strict) if any(c.strip() for c in r)]

    if delim != "\t":
        return read(csv.QUOTE_MINIMAL)
    rows = read(csv.QUOTE_NONE)
    if len({len(r) for r in rows}) > 1:
        try:
            quoted = read(csv.QUOTE_MINIMAL, strict=True)  # strict: a quote never closed (SMS texts start with one) cannot swallow rows
        except csv.Error:
            return rows
        if quoted and len({len(r) for r in quoted}) == 1:
            return quoted
    return rows


def _number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _longest_column(body: list[list[str]], width: int, skip: int | None = None) -> int:
    """The column of the longest entries (on average over the first 2,000 records of `width` cells):
    where a file without known names keeps its texts."""
    sample = [r for r in body[:2000] if len(r) == width] or body[:2000]
    mean_len = [np.mean([len(r[i]) if len(r) > i else 0 for r in sample]) if sample else 0.0 for i in range(width)]
    return int(np.argmax([m if i != skip else -1 for i, m in enumerate(mean_len)]))


def _names_texts(first: list[str], body: list[list[str]]) -> bool:
    """Whether the first row names a column of texts (`source,msg_body` over `web,<a sentence>`): every
    first cell is a short name without spaces and not a number, nearly every entry of the longest
    column has several words, and a column of few values (labels, sources) does not hold its first
    cell (`ham` over ham and spam is a label, not a name; a column of ids, each value once, tells
    nothing: `0<TAB>Okay` over `1<TAB>a sentence` is a first text)."""
    width = len(first)
    rows = [r for r in body[:2000] if len(r) == width]
    sample = rows[:200]
    if width < 2 or len(sample) < 5 or not all(0 < len(h) <= 32 and not any(ch.isspace() for ch in h) and not _number(h) for h in first):
        return False
    col = _longest_column(sample, width)
    if sum(len(r[col].split()) >= 2 for r in sample) < 0.9 * len(sample):
        return False
    values = [{r[i] for r in rows} for i in range(width)]
    if any(first[i] in values[i] for i in range(width)):
        return False
    return any(i != col and len(values[i]) <= max(2, len(rows) // 4) for i in range(width))  # a label-like column names itself


def _names_numbers(first: list[str], body: list[list[str]]) -> bool:
    """Whether the first row names a column of numbers (`id` over 7, 8, ...): a header, as
    csv.Sniffer.has_header reasons, even when no column has a name transferkit knows."""

    sample = [r for r in body[:200] if len(r) == len(first)]
    return bool(sample) and any(not _number(first[i]) and all(_number(r[i]) for r in sample) for i in range(len(first)))


def _path_names() -> tuple[str, ...]:
    from .data import PATH_NAMES  # an image list's column names (data imports this module)

    return PATH_NAMES


def _names_labels(first: list[str], body: list[list[str]], classes: list[str] | None) -> bool:
    """Whether the first row names a column of a run's class labels (`kind` over ham, spam, ...)."""
    if not classes:
        return False
    known = {c.strip() for c in classes}
    sample = [r for r in body[:200] if len(r) == len(first)]
    return bool(sample) and any(first[i].strip() not in known and all(r[i].strip() in known for r in sample) for i in range(len(first)))


def _dname(d: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(d, repr(d))


def _column(header: list[str], given: str | None, known: tuple[str, ...], path: Path, what: str) -> int | None:
    lower = [h.lower() for h in header]
    if given is not None:
        if given in header:
            return header.index(given)
        if given.lower() in lower:
            return lower.index(given.lower())
        if given.isdigit() and 1 <= int(given) <= len(header):
            return int(given) - 1
        raise UserError(f"{path}: no {what} column {given!r}; columns found: {', '.join(header)}"
                        + ("" if given.isdigit() else f" (a file without a header names its columns by position from 1: --{what}-column 2)"))
    for k in known:
        if k in lower:
            return lower.index(k)
    return None


def _guess_columns(header: list[str], body: list[list[str]], ti: int | None, li: int | None, path: Path, delim: str = ",") -> tuple[int, int]:
    """Without names: the text column has the longest entries, the label column the fewest distinct values."""
    sample = [r for r in body[:2000] if len(r) == len(header)]
    if len(header) < 2 or not sample:
        raise UserError(
            f"{path}: found {len(header)} column(s) ({', '.join(header)}) read as {_dname(delim)}-delimited; need a text column and a label column "
            "(name them with --text-column and --label-column" + ("; another delimiter: --delimiter" if len(header) < 2 else "") + ")"
        )
    distinct = [len({r[i] for r in sample}) for i in range(len(header))]
    if ti is None:
        ti = _longest_column(sample, len(header), skip=li)
    if li is None:  # a column of one value (a constant `source`) labels nothing
        li = int(np.argmin([d if i != ti and d >= 2 else 1 << 30 for i, d in enumerate(distinct)]))
    if distinct[li] > max(50, len(sample) // 2):
        raise UserError(
            f"{path}: could not tell which column holds the labels (columns found: {', '.join(header)}); "
            "name it with --label-column"
        )
    return ti, li


def read_texts(spec: str, *, text_column: str | None = None, encoding: str = "auto") -> list[str]:
    """Unlabelled texts: a CSV/TSV's text column (labels, if any, are ignored), or a file's lines."""
    return [t for _, t in read_text_rows(spec, text_column=text_column, encoding=encoding)]


def read_text_rows(spec: str, *, text_column: str | None = None, also: str | None = None, encoding: str = "auto",
                   classes: list[str] | None = None, empty: list[int] | None = None) -> list[tuple[int, str]]:
    """`read_texts` with where each text came from: (row, text), the row being a text file's line
    number or a CSV/TSV's record number, its header being record 1 (as `read_table` names rows), blank
    records not counted (both from 1; blank texts are left out). A CSV/TSV's header is detected as `read_table` detects it; the text
    column is `text_column` (a name, or a position from 1), else `also` (a run's own
    --text-column), else a known name, else, without a header, the column of the longest texts.
    `classes` (a run's): a first row over a column of those labels is a header too (`kind<TAB>msg`).
    `empty`: a list given here gets the CSV/TSV records left out for an empty text whose other cells
    are not empty (`,ham`): a blank record is nothing, but such a row is an example without its text."""
    p = Path(spec)
    if p.is_dir():
        f = _find(p, "train")
        if f is None:
            raise UserError(f"{spec}: no train.csv / train.tsv in this folder")
        p = f
    if not p.is_file():
        raise UserError(f"data not found: {spec}")
    text = _decode(p.read_bytes(), p, encoding)
    tabbed = p.suffix.lower() in (".tab", ".txt", "") and _every_line_tabbed(text)  # the SMS Spam Collection's label<TAB>text, no suffix
    if p.suffix.lower() in (".csv", ".tsv") or tabbed:
        csv.field_size_limit(MAX_FIELD)
        d = "\t" if tabbed else _delimiter(text, p, None)
        try:
            rows = _records(text, d)
        except csv.Error as e:
            raise UserError(f"{p}: not a readable {_dname(d)}-delimited file ({e})") from None
        if not rows:
            raise UserError(f"{p}: empty file (no header, no texts)")
        first = [h.strip() for h in rows[0]]
        has_header = (text_column is not None and not text_column.isdigit()) or _is_header(first, rows[1:], classes, also=(also, *_path_names()))
        header, body = (first, rows[1:]) if has_header else ([f"column{i + 1}" for i in range(len(first))], rows)
        col = None
        if text_column is not None:
            col = _column(header, text_column, (), p, "text")
        elif also:
            try:
                col = _column(header, also, (), p, "text")
            except UserError:  # the run's column is not in this file: the usual names
                pass
        if col is None:
            col = _column(header, None, TEXT_NAMES, p, "text")
        if col is None and has_header:
            if any(h.lower() in _path_names() for h in header):  # an image list given to a text model: not its paths as texts
                raise UserError(f"{p}: no text column (looked for {', '.join(([also] if also else []) + list(TEXT_NAMES))}); columns found: "
                                f"{', '.join(header)}, a list of images? A text model reads texts; name the text column with --text-column")
        if col is None:  # no header, or none of its names known: the column of the longest texts, as fit reads such a file
            col = _longest_column(body, len(header))
            values = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
            if values and all(_number(v) for v in values):  # `id,score` over numbers: its ids were classified as texts
                raise UserError(f"{p}: no column of texts (columns: {', '.join(header)}; the longest, {header[col]}, holds numbers); "
                                "name the text column with --text-column")
        # records counted as in the file, the header being record 1 (as evaluate's mistakes.csv counts them)
        texts = [(i, r[col]) for i, r in enumerate(body, 2 if has_header else 1) if len(r) > col and r[col].strip()]
        if empty is not None:
            empty += [i for i, r in enumerate(body, 2 if has_header else 1) if not (len(r) > col and r[col].strip()) and any(c.strip() for c in r)]
    else:  # lines end at \n (or \r\n, or a lone \r) only: splitlines() also split at form feeds and U+2028 inside scraped texts
        texts = [(i, ln) for i, ln in enumerate(_lines(text), 1) if ln.strip()]
    if not texts:
        raise UserError(f"{p}: no texts")
    return texts


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _every_line_tabbed(text: str) -> bool:
    """Whether the first 200 lines that are not blank each hold the same number (one or more) of tabs:
    a table, as fit reads such a file (predict read its label as part of each text)."""
    lines = [ln for ln in _lines(text[:1 << 20]) if ln.strip()][:200]
    return bool(lines) and lines[0].count("\t") >= 1 and all(ln.count("\t") == lines[0].count("\t") for ln in lines)
