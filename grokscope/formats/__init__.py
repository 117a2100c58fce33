"""Checkpoint layouts: detect what is on disk and read it into the same Run.

``load(path)`` accepts a run in any layout, one checkpoint file, or a folder of independent models or
runs, and returns a Run (one run or model) or a list of Runs (a folder of them, sorted by path).
Every Run has HookedTransformer state-dict names, its Task, its attention rate, the train split where
the layout records it, and the training log where it is stored. Pickles are read weights-only
(``grokscope.formats.safe_load``); ``trust_pickle=True`` lifts that for files the user trusts.

>>> sorted(FORMATS)
['collection', 'nanda', 'native', 'pizza_release', 'tl_demo', 'transformer_lens']
"""

import importlib
import os
import re
from collections.abc import Callable
from types import ModuleType

from grokscope.errors import GrokscopeError
from grokscope.formats import infer, nanda, safe_load, tl_demo, transformer_lens
from grokscope.formats.base import Run, skip_entry

__all__ = ["FORMATS", "Run", "detect", "load", "load_run", "load_runs"]

FORMATS: dict[str, str] = {
    "native": "grokscope's own run folder: run.json, split.safetensors, checkpoints/step_*.safetensors, log.csv",
    "pizza_release": "the Clock-and-Pizza release [Z23]: model_<id>.pt beside config_<id>.json, or a folder of them",
    "transformer_lens": "a HookedTransformer state dict (.safetensors or .pt/.pth) with an optional JSON config "
                        "beside it, or a folder of them named by step",
    "nanda": "the [N23] code's layout: a whole run in one file {state_dicts, epochs, train_losses, test_losses, "
             "config}, one model under 'model', or a folder of per-epoch files",
    "tl_demo": "the TransformerLens grokking-demo bundle {model, config, checkpoints, checkpoint_epochs, "
               "train_losses, test_losses, train_indices, test_indices}",
    "collection": "a folder of independent models or runs, each in one of the layouts above",
}
"""Every layout ``detect`` can name, with a one-line description."""

SKIP_FOLDERS = ("grokscope", "__pycache__")
"""Sub-folders a collection never reads (grokscope writes its outputs into PATH/grokscope/)."""

_INPUT = "a checkpoint file, a run folder, or a folder of models or runs"


def _optional(name: str) -> ModuleType | None:
    """A reader module that may not exist in this installation (None when it does not)."""
    try:
        return importlib.import_module(f"grokscope.formats.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"grokscope.formats.{name}":
            return None
        raise


def _natural_key(path: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def _has_checkpoints(folder: str, depth: int = 2) -> bool:
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError:
        return False
    if any(e.is_file() and e.name.endswith(safe_load.CHECKPOINT_SUFFIXES) for e in entries):
        return True
    return depth > 1 and any(e.is_dir() and e.name not in SKIP_FOLDERS and _has_checkpoints(e.path, depth - 1)
                             for e in entries)


def _members(folder: str) -> list[str]:
    """The entries of a collection: checkpoint files, and sub-folders that hold checkpoints."""
    members = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or entry.name in SKIP_FOLDERS:
            continue
        if entry.is_file() and entry.name.endswith(safe_load.CHECKPOINT_SUFFIXES):
            members.append(entry.path)
        elif entry.is_dir() and _has_checkpoints(entry.path):
            members.append(entry.path)
    return sorted(members, key=_natural_key)


def _plan(path: str, trust_pickle: bool) -> tuple[str, Callable[[], "Run | list[Run]"]]:
    """The format of ``path`` and a function that reads it."""
    if not os.path.exists(path):
        raise GrokscopeError("no such file or folder", expected=_INPUT, where=path)
    native, pizza = _optional("native"), _optional("pizza")
    if native is not None and native.matches(path):
        return "native", lambda: native.read(path)
    if pizza is not None and pizza.matches(path):
        if os.path.isdir(path):
            return "pizza_release", lambda: pizza.read_folder(path)
        return "pizza_release", lambda: pizza.read_model(path)
    if os.path.isdir(path):
        return _plan_folder(path, trust_pickle)
    obj = safe_load.load_checkpoint(path, trust_pickle=trust_pickle)
    if tl_demo.matches_object(obj):
        return "tl_demo", lambda: tl_demo.from_object(obj, path)
    if nanda.matches_object(obj):
        return "nanda", lambda: nanda.from_object(obj, path)
    if transformer_lens.matches_object(obj):
        return "transformer_lens", lambda: transformer_lens.from_object(obj, path)
    state = nanda.model_state(obj)
    found = infer.describe_keys(state if state is not None else obj) if isinstance(obj, dict) else \
        f"a {type(obj).__name__}"
    raise GrokscopeError(f"keys {found}", expected=f"{infer.LAYOUTS} (embed.W_E and blocks.0.attn.W_O), "
                         "an [N23] run or a TransformerLens demo bundle", where=path)


def _plan_folder(path: str, trust_pickle: bool) -> tuple[str, Callable[[], "Run | list[Run]"]]:
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if not entries:
        raise GrokscopeError("an empty folder", expected=_INPUT, where=path)
    files = transformer_lens.step_files(path)
    if files:
        layout = transformer_lens.FORMAT
        for _, file in files:
            try:
                layout = transformer_lens._peek(file, trust_pickle)[1]
                break
            except GrokscopeError:
                continue
        return layout, lambda: transformer_lens.read_folder(path, trust_pickle=trust_pickle)
    members = _members(path)
    if not members:
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise GrokscopeError(f"no checkpoint files (entries: {shown})",
                             expected=f"{_INPUT}; checkpoints end in {', '.join(safe_load.CHECKPOINT_SUFFIXES)}",
                             where=path)
    return "collection", lambda: _read_collection(members, trust_pickle, None)


def _read_collection(members: list[str], trust_pickle: bool, skipped: list[dict[str, str]] | None) -> list[Run]:
    runs: list[Run] = []
    for member in members:
        try:
            loaded = load(member, trust_pickle=trust_pickle, skipped=skipped)
        except GrokscopeError as error:
            if skipped is None:
                raise
            skipped.append(skip_entry(member, error))
            continue
        runs.extend(loaded if isinstance(loaded, list) else [loaded])
    return runs


def detect(path: str | os.PathLike) -> str:
    """The layout of ``path``, a key of ``FORMATS``; a GrokscopeError naming the path when none fits.

    Opening a pickle to look at its keys is weights-only; a file that needs more is refused here too.
    """
    return _plan(os.fspath(path), trust_pickle=False)[0]


def load(path: str | os.PathLike, *, trust_pickle: bool = False,
         skipped: list[dict[str, str]] | None = None) -> Run | list[Run]:
    """Read ``path`` in whatever layout it is in.

    Args:
        path: a run (any layout), one checkpoint file, or a folder of independent models or runs.
        trust_pickle: load pickles fully, running any code in them (the CLI's ``--trust-pickle``).
        skipped: for a folder of models or runs, a list that collects ``{"path", "error"}`` for every
            member that cannot be read, which is then left out; without it such a member is an error.

    Returns:
        A Run for a run or a single model; a list of Runs, sorted by path, for a folder of them.
    """
    path = os.fspath(path)
    name, reader = _plan(path, trust_pickle)
    if name == "collection" and skipped is not None:
        runs = _read_collection(_members(path), trust_pickle, skipped)
        if not runs:
            raise GrokscopeError(f"no readable model or run among {len(skipped)} entries "
                                 f"(first: {skipped[0]['error'] if skipped else 'none'})", expected=_INPUT, where=path)
        return runs
    return reader()


def load_runs(path: str | os.PathLike, *, trust_pickle: bool = False,
              skipped: list[dict[str, str]] | None = None) -> list[Run]:
    """Like ``load``, always a list (one element for a single run or model)."""
    loaded = load(path, trust_pickle=trust_pickle, skipped=skipped)
    return loaded if isinstance(loaded, list) else [loaded]


def load_run(path: str | os.PathLike, *, trust_pickle: bool = False) -> Run:
    """Exactly one run or model from ``path``; a GrokscopeError when it holds several (use ``load_runs``)."""
    loaded = load(path, trust_pickle=trust_pickle)
    if not isinstance(loaded, list):
        return loaded
    if len(loaded) == 1:
        return loaded[0]
    names = ", ".join(os.path.basename(run.source) for run in loaded[:3]) + (", ..." if len(loaded) > 3 else "")
    raise GrokscopeError(f"{len(loaded)} models or runs ({names})",
                         expected="one run or model (load_runs reads a folder of several)", where=os.fspath(path))

