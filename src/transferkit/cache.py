"""The on-disk cache: decoded images (`images/KEY.u8` + `KEY.json`) and backbone features
(`features/KEY.safetensors`), under TRANSFERKIT_CACHE_DIR (default ~/.cache/transferkit).

Both are pure caches: anything here can be deleted at any time and is rebuilt when next needed. The
cache keeps itself under a size limit, TRANSFERKIT_CACHE_MAX_GB (default 20; 0 = no limit): after a
run adds an entry, the least recently used entries go first until the rest fits. A hit marks its entry
used (its modification time). Deleting an entry another process has memory-mapped is safe on POSIX
systems: that process keeps its mapping until it ends.

A size-capped least-recently-used store of whole files is a few lines here; the libraries that offer one
(diskcache, joblib.Memory) store pickled values in their own formats, not the memory-mapped uint8 files
and safetensors stores this cache hands out.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

KINDS = ("images", "features")
DEFAULT_MAX_GB = 20.0
STALE_TMP_S = 6 * 3600  # a temporary file this old belongs to a process that died while writing


def cache_dir() -> Path:
    p = Path(os.environ.get("TRANSFERKIT_CACHE_DIR") or Path.home() / ".cache" / "transferkit")
    if p.exists() and not p.is_dir():
        raise UserError(f"the cache folder {p} is a file" + (" (TRANSFERKIT_CACHE_DIR)" if os.environ.get("TRANSFERKIT_CACHE_DIR") else "")
                        + ": point TRANSFERKIT_CACHE_DIR at a folder")
    return p


def max_bytes() -> int | None:
    """The size limit in bytes from TRANSFERKIT_CACHE_MAX_GB, or None for no limit."""
    raw = os.environ.get("TRANSFERKIT_CACHE_MAX_GB", "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gb = float(raw)
    except ValueError:
        raise UserError(f"TRANSFERKIT_CACHE_MAX_GB must be a number of gigabytes (0: no limit), got {raw!r}") from None
    if gb < 0 or gb != gb:
        raise UserError(f"TRANSFERKIT_CACHE_MAX_GB must be >= 0 (0: no limit), got {raw!r}")
    return None if gb == 0 else int(gb * 1e9)


@dataclass
class Entry:
    kind: str  # images | features
    key: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    last_used: float = 0.0  # the newest modification time of its files

    def remove(self) -> None:
        for f in self.files:
            f.unlink(missing_ok=True)


ENTRY_NAME = re.compile(r"[0-9a-f]{32}\.(u8|json|safetensors)")  # what the cache writes: a key of 32 hex digits; nothing else is counted or removed


def entries() -> list[Entry]:
    """Every entry of the cache, least recently used first. Temporary files of writes in progress are
    not entries."""
    root = cache_dir()
    found: dict[tuple[str, str], Entry] = {}
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if not ENTRY_NAME.fullmatch(f.name) or not f.is_file():  # a file of the user's (QA AM: --clear removed a photo there)
                continue
            try:
                st = f.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            e = found.setdefault((kind, f.name.split(".")[0]), Entry(kind, f.name.split(".")[0]))
            e.files.append(f)
            e.bytes += st.st_size
            e.last_used = max(e.last_used, st.st_mtime)
    return sorted(found.values(), key=lambda e: e.last_used)


def describe(e: Entry) -> str:
    """What an entry holds, as its own files say: decoded images (how many, of which folder, at what
    size) or features (of which model, input size, precision and how many inputs); "" for an entry
    written before they said it, or one that cannot be read."""
    import json

    try:
        if e.kind == "images":
            meta = next((f for f in e.files if f.suffix == ".json"), None)
            info = json.loads(meta.read_text()) if meta else {}
            n, _, size, _ = info["shape"]
            return f"{n} image{'s' * (n != 1)} at {size} px" + (f", of {info['where']}" if info.get("where") else "")
        from safetensors import safe_open

        with safe_open(str(e.files[0]), "pt") as f:
            ident, rows = json.loads((f.metadata() or {})["ident"]), f.get_slice("digests").get_shape()[0]
        unit = f"max_length {ident['input_size']}" if ident.get("texts") else f"{ident['input_size']} px"
        return f"features of {rows} {'text' if ident.get('texts') else 'image'}{'s' * (rows != 1)}, {ident['model'] or 'a model'} at {unit}" + (
            f", {ident['precision']}" if ident.get("precision") not in (None, "no") else "")
    except Exception:  # an entry written before entries said what they hold, or a damaged one: nothing to say
        return ""


def stale_temporaries() -> list[Path]:
    """Temporary files left by writers that died: their process (the pid after `.tmp`) is gone, or
    they are older than STALE_TMP_S (a younger one of a live process may be a write in progress). A
    SIGKILLed decode left 30 MB that `cache --clear all` kept for 6 hours."""
    from .rundir import process_alive

    root = cache_dir()
    now = time.time()
    out = []
    for kind in KINDS:
        folder = root / kind
        if folder.is_dir():
            for f in folder.glob(".*.tmp*"):
                pid = f.name.rpartition(".tmp")[2]
                try:
                    if now - f.stat().st_mtime > STALE_TMP_S or (pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid))):
                        out.append(f)
                except FileNotFoundError:
                    pass
    return out


def mark_used(*paths: Path) -> None:
    """A cache hit: the entry becomes the most recently used."""
    for p in paths:
        try:
            os.utime(p)
        except OSError:  # a read-only cache still serves hits
            pass


def enforce_limit(keep: tuple[Path, ...] = (), limit: int | None = -1) -> list[Entry]:
    """Remove least recently used entries until the cache fits its limit; never an entry holding a
    file of `keep` (what the current run just wrote or read). Returns what was removed."""
    limit = max_bytes() if limit == -1 else limit
    for f in stale_temporaries():
        f.unlink(missing_ok=True)
    if limit is None:
        return []
    all_ = entries()
    total = sum(e.bytes for e in all_)
    keep_set = {Path(p).resolve() for p in keep}
    removed = []
    for e in all_:
        if total <= limit:
            break
        if any(f.resolve() in keep_set for f in e.files):
            continue
        e.remove()
        total -= e.bytes
        removed.append(e)
    return removed


def clear(kind: str = "all", older_than_days: float | None = None) -> list[Entry]:
    """Remove the entries of `kind` (images, features or all), or only those unused for longer than
    `older_than_days`; stale temporary files go too."""
    if kind not in (*KINDS, "all"):
        raise UserError(f"cache kind must be one of images, features, all; got {kind!r}")
    if older_than_days is not None and older_than_days < 0:
        raise UserError(f"--older-than-days must be >= 0, got {older_than_days}")
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed = []
    for e in entries():
        if (kind == "all" or e.kind == kind) and (cutoff is None or e.last_used < cutoff):
            e.remove()
            removed.append(e)
    for f in stale_temporaries():
        f.unlink(missing_ok=True)
    return removed
