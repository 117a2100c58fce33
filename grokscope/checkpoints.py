"""Files of the native run format: names, atomic writes, the checkpoint schedule and the training log.

Layout (DESIGN.md, "Native run format")::

    DIR/run.json                                  configuration, seeds, schedule, status
    DIR/split.safetensors                         ``train_indices`` into the lexicographic grid
    DIR/checkpoints/step_XXXXXXX.safetensors      HookedTransformer parameters (no buffers)
    DIR/log.csv                                   step,train_loss,test_loss,train_acc,test_acc[,trainonly_*]
    DIR/resume.safetensors                        optimiser state of the newest checkpoint (while training)
    DIR/.grokscope.lock                           while training: the trainer's lock (``run_lock``), its pid

Every file is written to a hidden temporary name in its own folder, fsync'd and renamed over the
final name (``atomic_write``), so a reader never sees half a file under a real name, whatever
moment the writer is killed at. Temporary names start with ``.`` and end with ``.tmp``; nothing
matching ``CHECKPOINT_PATTERN`` is ever a temporary file.

>>> checkpoint_filename(120)
'step_0000120.safetensors'
>>> checkpoint_step("step_0000120.safetensors"), checkpoint_step(".step_0000120.safetensors.1.tmp")
(120, None)
>>> checkpoint_steps(100, every=25, per_decade=4)
[0, 1, 2, 3, 6, 10, 18, 25, 32, 50, 56, 75, 100]
"""

import contextlib
import csv
import fcntl
import functools
import inspect
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from grokscope.errors import GrokscopeError
from grokscope.limits import check_safetensors_size

RUN_JSON = "run.json"
SPLIT_FILE = "split.safetensors"
CHECKPOINT_DIR = "checkpoints"
LOG_CSV = "log.csv"
RESUME_FILE = "resume.safetensors"
LOCK_FILE = ".grokscope.lock"
FORMAT_NAME = "grokscope-native"
FORMAT_VERSION = 1

CHECKPOINT_PATTERN = re.compile(r"step_(\d{7,})\.safetensors")
"""Full-match pattern of a checkpoint file name; the group is the step."""

LOG_COLUMNS = ("step", "train_loss", "test_loss", "train_acc", "test_acc")

TEMP_SUFFIX = ".tmp"


def checkpoint_filename(step: int) -> str:
    """The file name of the checkpoint after ``step`` optimiser steps (7 digits, zero-padded)."""
    return f"step_{int(step):07d}.safetensors"


def checkpoint_step(name: str) -> int | None:
    """The step encoded in a checkpoint file name, or None for any other name (temporary files too)."""
    match = CHECKPOINT_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file left by ``atomic_write`` (never a finished file)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def atomic_write(path: str | os.PathLike, write: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Write a file so that ``path`` holds either its old content or the complete new one, never a part.

    ``write`` is the content (bytes or str, written as UTF-8) or a function that writes into the
    binary file object it is given. The data goes to a hidden temporary file in the same folder,
    is flushed and fsync'd, then renamed over ``path``; the folder is fsync'd too so the rename
    survives a crash. On any error the temporary file is removed and ``path`` is untouched.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> _ = atomic_write(target, "hello")
    >>> target.read_text()
    'hello'
    """
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            if callable(write):
                write(handle)
            else:
                handle.write(write.encode("utf-8") if isinstance(write, str) else write)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_bookkeeping(name: str) -> bool:
    """Whether ``name`` is a file grokscope keeps beside a run's data: a temporary file or the lock."""
    return name == LOCK_FILE or is_temporary(name)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock for the ``with`` block: one writer per folder at a time.

    The lock is ``fcntl.flock`` on ``folder/.grokscope.lock`` (the folder is created if needed),
    taken without waiting: while another process holds it, GrokscopeError names the folder and the
    holder's pid (written into the file). The operating system releases a flock when its holder
    exits, however it dies (SIGKILL included), so a killed trainer leaves no stale lock: the next
    holder takes over its file. On a normal exit the holder removes the file while still holding
    it, so a folder is left as it was; a holder checks after locking that its file is still the one
    under the name (not one removed meanwhile), else it starts again.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with run_lock(folder):  # doctest: +ELLIPSIS
    ...     with run_lock(folder):
    ...         pass
    Traceback (most recent call last):
    ...
    grokscope.errors.GrokscopeError: ...: found a run locked by process ...; expected ...
    >>> with run_lock(folder) as lock:  # released on exit, so taking it again works
    ...     lock.name
    '.grokscope.lock'
    >>> os.listdir(folder)
    []
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GrokscopeError("a file", expected="a folder for the run (or a new path)", where=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise GrokscopeError(f"a run locked by process {holder} (another grokscope train is writing it)",
                                 expected="one trainer per folder: wait for it to finish, or use another --out",
                                 where=str(folder)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by its last holder after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock, so no one else holds this file
        os.close(fd)  # closing the only descriptor releases the flock


def holding_run_lock(argument: str) -> Callable:
    """Decorator: call the function inside ``run_lock`` on the folder passed as its ``argument``."""
    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            with run_lock(signature.bind(*args, **kwargs).arguments[argument]):
                return function(*args, **kwargs)
        return locked
    return decorate


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer left in ``folder``; returns what was removed."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_file() and is_temporary(entry.name):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file of ``tensors`` (contiguous CPU tensors) with string metadata."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, data)


def load_tensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``. Never unpickles.

    Raises GrokscopeError naming the file when it is missing, truncated or not safetensors.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_file():
        check_safetensors_size(path)  # before any tensor is read
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for damaged files
        size = path.stat().st_size if path.exists() else None
        found = f"an unreadable file ({type(error).__name__}: {error}; {size} bytes)" if size is not None \
            else "no such file"
        raise GrokscopeError(found, expected="a complete safetensors file", where=str(path)) from None
    return tensors, metadata


def checkpoint_steps(epochs: int, every: int, per_decade: int = 10) -> list[int]:
    """Checkpoint steps: dense early (log-spaced), regular later; always 0 and ``epochs``.

    The union of round(10^(j/per_decade)) for j >= 0 (``per_decade`` points per factor of ten,
    capturing the fast memorisation phase) and every multiple of ``every``, cut at ``epochs``.
    """
    steps = {0, int(epochs)}
    steps.update(range(0, epochs + 1, max(int(every), 1)))
    if per_decade > 0 and epochs > 0:
        for j in range(int(per_decade * math.log10(epochs)) + 2):
            step = round(10 ** (j / per_decade))
            if step <= epochs:
                steps.add(step)
    return sorted(steps)


# ----- the training log ---------------------------------------------------------------------------

def log_to_csv(log: dict[str, list]) -> str:
    """The text of log.csv for a log held as columns (full float precision).

    ``LOG_COLUMNS`` come first; any further columns (the train-only measures of ``grokscope.monitor``)
    follow in the log's order, numbers at full precision and text (the phase) as it is.
    """
    extra = [column for column in log if column not in LOG_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*LOG_COLUMNS, *extra])
    for row in zip(*(log[column] for column in (*LOG_COLUMNS, *extra))):
        writer.writerow([int(row[0]), *(repr(float(x)) for x in row[1:len(LOG_COLUMNS)]),
                         *(x if isinstance(x, str) else repr(float(x)) for x in row[len(LOG_COLUMNS):])])
    return buffer.getvalue()


def _extra_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def read_log(path: str | os.PathLike) -> dict[str, list]:
    """Read log.csv as columns: ``{"step": [int], "train_loss": [float], ...}``.

    The header starts with ``LOG_COLUMNS``; columns after them (written by newer versions) are read as
    numbers where they parse and as text otherwise, so logs with and without them both load.
    """
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise GrokscopeError(f"an unreadable log ({error.strerror})", expected="a CSV file",
                             where=str(path)) from None
    n = len(LOG_COLUMNS)
    if not rows or tuple(rows[0][:n]) != LOG_COLUMNS or len(set(rows[0])) != len(rows[0]):
        raise GrokscopeError(f"header {rows[0] if rows else 'none'}",
                             expected=f"{','.join(LOG_COLUMNS)} (then any other distinct columns)", where=str(path))
    header = rows[0]
    log: dict[str, list] = {column: [] for column in header}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise GrokscopeError(f"line {line} = {row}", expected=f"{len(header)} columns", where=str(path))
        try:
            values = [int(row[0]), *(float(x) for x in row[1:n]), *(_extra_value(x) for x in row[n:])]
        except ValueError:
            raise GrokscopeError(f"line {line} = {row}", expected="a step and four numbers",
                                 where=str(path)) from None
        for column, value in zip(header, values):
            log[column].append(value)
    return log


def truncate_log(log: dict[str, list], last_step: int) -> dict[str, list]:
    """The log without rows after ``last_step`` (what a resumed run keeps)."""
    keep = [i for i, step in enumerate(log["step"]) if step <= last_step]
    return {column: [values[i] for i in keep] for column, values in log.items()}


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf as None, tuples as lists, numpy and torch scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Atomically write ``data`` as strict, indented JSON (NaN and infinities become null)."""
    return atomic_write(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object, raising GrokscopeError naming the file if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GrokscopeError(f"an unreadable JSON file ({error})", expected="a JSON object",
                             where=str(path)) from None
    if not isinstance(data, dict):
        raise GrokscopeError(f"a JSON {type(data).__name__}", expected="a JSON object", where=str(path))
    return data
