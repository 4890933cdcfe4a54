"""The run directory: every file written atomically, and `manifest.json` written last.

A run is complete exactly when `manifest.json` exists and every file it lists has the listed sha256.
A crashed or interrupted run therefore never looks complete, whatever else it left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import yaml

from .errors import UserError

MANIFEST = "manifest.json"
LOCK = ".lock"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_dir(path: Path) -> Path:
    """mkdir -p, with a user's message (not a traceback) for a folder that cannot be made there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {path}: {e.strerror or e}") from None
    return path


def check_can_make(path: Path) -> None:
    """Refuse, before any work, a folder that `make_dir` could not make: its nearest existing parent is
    a file, or not writable."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if p == path.absolute():
        if not p.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
    elif not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the folder {path}: {p} is {'not a directory' if not p.is_dir() else 'not writable'}")


def refuse_run_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse to write `path` when it is a file a finished run lists in its manifest (or the manifest
    itself): writing over it left the run unusable ("does not match its sha256")."""
    for p in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):  # as typed, and through any linked folder
        for run in p.parents:
            m = run / MANIFEST
            if m.is_file():
                try:
                    listed = set(json.loads(m.read_text())["files"]) | {MANIFEST}
                except (OSError, ValueError, KeyError, TypeError):
                    break
                if p.relative_to(run).as_posix() in listed:
                    raise UserError(f"{flag} {path} is a file of the run {run} (its manifest lists it): writing over it would break the run; "
                                    "give another file name")
                break


def atomic_write_bytes(path: Path, data: bytes) -> None:
    if path.exists() and not path.is_file():  # /dev/null, /dev/stdout, a FIFO: written into, never replaced
        # (`predict --out /dev/null` as root replaced the device with a regular file, for every program)
        with open(path, "wb") as f:
            f.write(data)
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no half file behind (the target is untouched)
        raise


def is_complete(path: str | os.PathLike) -> bool:
    return verify(path) == []


def verify(path: str | os.PathLike) -> list[str]:
    """Problems that make `path` not a complete run ([] when it is one)."""
    p = Path(path)
    m = p / MANIFEST
    if not m.is_file():
        return [f"{p} has no {MANIFEST} (the run did not finish)"]
    try:
        files = json.loads(m.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:  # TypeError: valid JSON of another shape (`[]`), a traceback
        return [f"{m} is damaged ({type(e).__name__}: {e})"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return [f"{m} is damaged (its `files` is not a mapping of file names to sha256 digests)"]
    # every run writes its model: a manifest listing nothing (`{"files": {}}`) passed a run without weights as complete
    problems = [f"{name} is not in the manifest" for name in ("model.json", "model.safetensors") if name not in files]
    for name, digest in files.items():
        f = p / name
        if not f.is_file():
            problems.append(f"{name} is missing")
        elif hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            problems.append(f"{name} does not match its sha256 in the manifest")
    return problems


def require_finished(path: str | os.PathLike, name: str | None = None) -> None:
    """A UserError unless `path` is a complete run, saying what it is instead (`name`: how the user
    gave it, e.g. `--model run:DIR`): not a run at all, an interrupted run to resume, a run that did
    not finish, or a finished one whose files changed."""
    p = Path(path)
    name = name or str(p)
    problems = verify(p)
    if not problems:
        return
    holder = lock_holder(p)
    if holder and holder != os.getpid():  # training now: "an interrupted run, finish it with --resume" led to "in use"
        raise UserError(f"{name} is a run another transferkit process (pid {holder}) is training or writing now: wait for it to finish")
    if not (p / MANIFEST).exists():
        if (p / "search.json").is_file():  # a search's folder: its refitted model is a run of its own
            if (p / "final" / MANIFEST).is_file():
                raise UserError(f"{name} is a search folder, not a run: its best configuration, refitted, is the run {p / 'final'}")
            raise UserError(f"{name} is a search folder whose search has not finished (no {p / 'final'} yet): continue it with the same "
                            f"`transferkit search ... --out {p}` command; its refitted best run will be {p / 'final'}")
        if (p / "pipeline_state.json").is_file():
            stages = sorted(d.name for d in p.iterdir() if (d / MANIFEST).is_file())
            raise UserError(f"{name} is a pipeline folder, not a run: each stage's run is a folder in it"
                            + (f" ({', '.join(str(p / s) for s in stages[:5])})" if stages else " (none has finished yet)"))
        if any((p / "checkpoints").glob("ckpt-*.pt")):
            raise UserError(f"{name} is an interrupted run (it has checkpoints, no manifest): finish it with `transferkit fit --resume {p}`")
        if (p / "config.yaml").is_file():
            raise UserError(f"{name} is a run that did not finish (no {MANIFEST}, no checkpoint: stopped before training began): run its fit "
                            f"again, or `transferkit fit --resume {p}`, which starts it over with its settings")
        raise UserError(f"{name} is not a transferkit run directory (no {MANIFEST}): give the folder `transferkit fit --out` wrote")
    # it finished (its manifest is there): its files changed since, which "not a finished run" did not say
    raise UserError(f"{name} finished, but its files changed since: " + "; ".join(problems[:3]) + ". Restore them from a copy of the run, or fit "
                    "again (to serve a run without its report and plots, save a slim copy of the whole run with ImageClassifier/TextClassifier.load(RUN).save(DIR))")


def refuse_if_in_use(path: str | os.PathLike) -> None:
    """A UserError when another live process holds the run directory's lock (it is training, or
    writing its report)."""
    p = Path(path)
    pid = lock_holder(p)
    if pid and pid != os.getpid():
        raise UserError(f"{p} is in use by another transferkit process (pid {pid}); wait for it or stop it")


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc/PID/stat), so that a lock whose
    pid was reused by another process (after a reboot, in a container) is not taken for held; None
    where /proc does not say (macOS: the pid alone decides)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def lock_holder(path: str | os.PathLike) -> int | None:
    """The pid of the live process holding the run directory's lock (`PID STARTED`; an older lock has
    the pid alone), or None: no lock, or its process is gone."""
    try:
        pid_s, _, started = (Path(path) / LOCK).read_text().strip().partition(" ")
        pid = int(pid_s or 0)
    except (OSError, ValueError):
        return None
    if not pid or not process_alive(pid):
        return None
    now = _started(pid)
    return None if started and now is not None and now != started else pid


def releases_lock_on_failure(run):
    """`fit` and `adapt` (cfg, out, ...): a run that stops or fails releases its directory's lock (it
    stayed, and a later process under the same pid, a notebook's kernel, was refused the run as in use)."""
    import functools

    @functools.wraps(run)
    def wrapper(cfg, out=None, *args, **kwargs):
        try:
            return run(cfg, out, *args, **kwargs)
        except BaseException:
            if out is not None:
                release_lock(out)
            raise

    return wrapper


def release_lock(path: str | os.PathLike) -> None:
    """Remove the run directory's lock if this process holds it (a fit that stopped or failed left it,
    and another process alive under that pid later was refused the run)."""
    lock = Path(path) / LOCK
    try:
        if int(lock.read_text().strip().partition(" ")[0] or 0) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def refuse_unwritable_file(path: str | os.PathLike, said: str, what: str = "a CSV file") -> None:
    """An output file named by the user must be a file in an existing folder: said before the work,
    not as an OSError after it."""
    if Path(path).is_dir() or not Path(path).absolute().parent.is_dir():
        raise UserError(f"{said}: give {what} to write in an existing folder")


def refuse_out_in_data(out, data: str | None, model_name: str) -> None:
    """A run written into the image folder it trains on (`--data photos --out photos/run`): the next
    fit or adapt of that folder reads the run's plots and mistake images as examples (AdaBN counted 45
    target images in a folder of 40). Refused; a text folder (train.tsv, ...) reads named files only,
    and built-in data (digits) is no folder."""
    from .data import is_builtin
    from .inputs import modality_of

    if out is None or not data or is_builtin(data):
        return

    d = Path(data)
    try:
        if not d.is_dir() or modality_of(model_name) != "image":
            return
    except UserError:  # a run: that cannot be read: said where the model is loaded
        return
    data_dir, out_dir = d.resolve(), Path(out).resolve()
    if out_dir == data_dir or data_dir in out_dir.parents:
        raise UserError(f"--out {out} is inside the image folder {data}: the next fit or adapt of that folder would read the run's "
                        "plots and images as examples; write the run outside it")


class RunDir:
    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        self.path = Path(path)
        self.files: dict[str, str] = {}
        check_can_make(self.path)  # now, before the data is read and decoded (fit said it after them)
        # first: a run being trained (or writing its report) was called interrupted or finished, and the advice led here anyway
        self._refuse_if_in_use()
        if (self.path / MANIFEST).exists() and not overwrite:
            raise UserError(f"{self.path} already holds a finished run; pass --overwrite (overwrite=True in Python) to replace it, or choose another --out")
        if not overwrite and not (self.path / MANIFEST).exists() and any((self.path / "checkpoints").glob("ckpt-*.pt")):
            # an interrupted run (hours of training, perhaps) was started over in silence
            raise UserError(f"{self.path} holds an interrupted run with checkpoints: continue it with `transferkit fit --resume {self.path}`, "
                            "or pass --overwrite to start over (or choose another --out)")

    def _refuse_if_in_use(self) -> None:  # said now, not after the data is loaded and the plan printed; create() takes the lock
        refuse_if_in_use(self.path)

    def create(self) -> RunDir:
        make_dir(self.path)
        self._lock()
        old = self.path / MANIFEST
        if old.is_file():  # --overwrite of a finished run: its files go, so none of them (a mistakes.jpg this run does not draw) stays behind
            try:
                names = list(json.loads(old.read_text())["files"])
            except (ValueError, KeyError, TypeError):
                names = []
            for name in names:
                f = self.path / name
                if ".." not in Path(name).parts and f.resolve().is_relative_to(self.path.resolve()) and f.is_file():
                    f.unlink()
        old.unlink(missing_ok=True)  # from here until finalize() the run is incomplete
        return self

    def _lock(self) -> None:
        """One writer per run directory. A lock whose process is gone (or is this one) is taken over."""
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._refuse_if_in_use()
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {_started(os.getpid()) or ''}".strip())
            return
        raise UserError(f"could not lock {self.path}")

    def release(self) -> None:
        release_lock(self.path)

    def write_bytes(self, name: str, data: bytes) -> Path:
        target = self.path / name
        parts = Path(name).parts
        # A file of the run, or of one sub-folder of it (the text model's tokenizer); never elsewhere.
        if len(parts) > 2 or ".." in parts or Path(name).is_absolute() or not target.resolve().is_relative_to(self.path.resolve()):
            raise ValueError(f"refusing to write outside the run directory: {name!r}")
        target.parent.mkdir(exist_ok=True)
        atomic_write_bytes(target, data)
        self.files[name] = hashlib.sha256(data).hexdigest()
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, sort_keys=False) + "\n")

    def write_yaml(self, name: str, obj) -> Path:
        return self.write_text(name, yaml.safe_dump(obj, sort_keys=False))

    def write_figure(self, name: str, fig) -> Path:
        """PNG, or JPEG for a `.jpg` name (photographs: the mistakes' crops and maps, a sixth of the PNG)."""
        buf = io.BytesIO()
        jpeg = name.endswith(".jpg")
        fig.savefig(buf, format="jpg" if jpeg else "png", dpi=120, bbox_inches="tight", **({"pil_kwargs": {"quality": 85}} if jpeg else {}))
        return self.write_bytes(name, buf.getvalue())

    def finalize(self) -> None:
        manifest = {"files": dict(sorted(self.files.items())), "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_bytes(self.path / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        self.release()
