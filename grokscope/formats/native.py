"""Reader of grokscope's own run format (written by ``grokscope.training``; layout in ``grokscope.checkpoints``).

Accepted paths: the run folder (it holds run.json), its ``checkpoints`` folder, or one
``step_XXXXXXX.safetensors`` inside it (then the Run has that checkpoint only). Checkpoints load
lazily with safetensors (nothing is ever unpickled); temporary files of an interrupted writer are
never listed, and a damaged checkpoint raises GrokscopeError naming the file, so ``Run.iter_models``
records it in ``run.skipped`` and goes on.

>>> import tempfile
>>> matches(tempfile.mkdtemp())
False
"""

import os
from pathlib import Path

from grokscope import checkpoints as ck
from grokscope.errors import GrokscopeError
from grokscope.tasks import Task

FORMAT = "native"


def _locate(path: Path) -> tuple[Path, int | None] | None:
    """(run folder, the one step asked for or None), or None when ``path`` is not in a native run."""
    if path.is_dir():
        if (path / ck.RUN_JSON).is_file():
            root, step = path, None
        elif path.name == ck.CHECKPOINT_DIR and (path.parent / ck.RUN_JSON).is_file():
            root, step = path.parent, None
        else:
            return None
    elif path.is_file():
        step = ck.checkpoint_step(path.name)
        if step is None or path.parent.name != ck.CHECKPOINT_DIR:
            return None
        root = path.parent.parent
        if not (root / ck.RUN_JSON).is_file():
            return None
    else:
        return None
    try:
        marker = ck.read_json(root / ck.RUN_JSON).get("format")
    except GrokscopeError:
        return None
    return (root, step) if marker == ck.FORMAT_NAME else None


def matches(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a native run folder, its checkpoints folder, or a checkpoint inside one."""
    return _locate(Path(path)) is not None


def _model_config(meta: dict, where: Path):
    from grokscope import backend

    model = meta.get("model")
    if not isinstance(model, dict) or "d_model" not in model:
        raise GrokscopeError("no 'model' section", expected="HookedTransformerConfig fields", where=str(where))
    try:
        return backend.make_config(**model)
    except GrokscopeError as error:
        raise GrokscopeError(f"{error.found}", expected=error.expected, where=str(where)) from None
    except TypeError as error:
        raise GrokscopeError(f"model fields {sorted(model)} ({error})",
                             expected="HookedTransformerConfig fields", where=str(where)) from None


def read(path: str | os.PathLike):
    """The Run stored at ``path`` (see the module docstring for the accepted paths).

    ``run.steps`` come from the checkpoint file names, ``run.train_indices`` from split.safetensors,
    ``run.log`` from log.csv (columns, or None before the first checkpoint), ``run.config`` is run.json.
    """
    from grokscope.formats.base import Run

    path = Path(path)
    located = _locate(path)
    if located is None:
        raise GrokscopeError("no grokscope run (run.json with format 'grokscope-native')",
                             expected="a native run folder, its checkpoints folder or a step_*.safetensors "
                                      "inside one", where=str(path))
    root, only_step = located
    meta_path = root / ck.RUN_JSON
    meta = ck.read_json(meta_path)
    try:
        task = Task.from_dict(meta["task"])
    except (KeyError, TypeError):
        raise GrokscopeError("no usable 'task' section", expected="task fields p, op, eq_token, diff_vocab",
                             where=str(meta_path)) from None
    cfg = _model_config(meta, meta_path)

    checkpoint_dir = root / ck.CHECKPOINT_DIR
    found = []
    if checkpoint_dir.is_dir():
        for entry in checkpoint_dir.iterdir():
            step = ck.checkpoint_step(entry.name)
            if step is not None and entry.is_file() and (only_step is None or step == only_step):
                found.append((step, entry))
    found.sort()
    paths = [str(entry) for _, entry in found]

    def load_state(i: int) -> dict:
        tensors, _ = ck.load_tensors(paths[i])
        return tensors

    split_path = root / ck.SPLIT_FILE
    train_indices = None
    if split_path.is_file():
        tensors, _ = ck.load_tensors(split_path)
        if "train_indices" not in tensors:
            raise GrokscopeError(f"tensors {sorted(tensors)}", expected="'train_indices'", where=str(split_path))
        train_indices = tensors["train_indices"].long()
    log_path = root / ck.LOG_CSV
    log = ck.read_log(log_path) if log_path.is_file() else None

    return Run(task=task, cfg=cfg, steps=[step for step, _ in found], load_state=load_state,
               source=str(path), format=FORMAT, alpha=float(meta.get("attention_rate", 1.0)),
               train_indices=train_indices, config=meta, log=log, checkpoint_paths=paths)
