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

import torch

from grokscope import checkpoints as ck
from grokscope.errors import GrokscopeError
from grokscope.limits import check_model_size
from grokscope.tasks import Task

FORMAT = "native"


def _locate(path: Path) -> tuple[Path, int | None] | None:
    """(run folder, the one step asked for or None), or None when ``path`` is not in a native run.

    A folder laid out as a native run (run.json beside split.safetensors or checkpoints/step_*.safetensors)
    whose run.json is unreadable or lacks the format marker is an error about run.json, never read as
    some other layout.
    """
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
        if _laid_out_as_native(root):
            raise
        return None
    if marker == ck.FORMAT_NAME:
        return root, step
    if _laid_out_as_native(root):
        raise GrokscopeError(f"format = {marker!r}" if marker is not None else "no 'format' key",
                             expected=f"format {ck.FORMAT_NAME!r} (the folder holds a grokscope run's files)",
                             where=str(root / ck.RUN_JSON))
    return None


def _laid_out_as_native(root: Path) -> bool:
    """Whether ``root`` holds the native run's own files besides run.json (its split or a checkpoint)."""
    if (root / ck.SPLIT_FILE).is_file():
        return True
    folder = root / ck.CHECKPOINT_DIR
    return folder.is_dir() and any(ck.checkpoint_step(entry.name) is not None for entry in folder.iterdir())


def matches(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a native run folder, its checkpoints folder, or a checkpoint inside one."""
    return _locate(Path(path)) is not None


_MODEL_INTS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx")
"""Fields of run.json's ``model`` section that must be positive integers."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _task(meta: dict, where: Path) -> Task:
    section = meta.get("task")
    expected = "a 'task' object with p (an odd prime), op (a name), eq_token and diff_vocab (true/false)"
    if not isinstance(section, dict):
        found = "no 'task' key" if "task" not in meta else f"task = {section!r}"
        raise GrokscopeError(found, expected=expected, where=str(where))
    wrong = [f"{name} = {section[name]!r}" for name, ok in (("p", _is_int), ("op", lambda v: isinstance(v, str)),
                                                              ("eq_token", lambda v: isinstance(v, bool)),
                                                              ("diff_vocab", lambda v: isinstance(v, bool)))
             if name in section and not ok(section[name])]
    if "p" not in section or wrong:
        raise GrokscopeError("in 'task': " + (", ".join(wrong) if wrong else "no 'p'"), expected=expected,
                             where=str(where))
    try:
        return Task.from_dict(section)
    except GrokscopeError as error:
        raise GrokscopeError(f"in 'task': {error.found}", expected=error.expected, where=str(where)) from None


def _model_config(meta: dict, task: Task, where: Path):
    from grokscope import backend

    model = meta.get("model")
    if not isinstance(model, dict) or "d_model" not in model:
        found = "no 'model' key" if "model" not in meta else f"model = {str(model)[:60]}"
        raise GrokscopeError(found, expected="a 'model' object of HookedTransformerConfig fields", where=str(where))
    wrong = [f"{name} = {model[name]!r}" for name in _MODEL_INTS
             if name in model and not (_is_int(model[name]) and model[name] >= 1)]
    if wrong:
        raise GrokscopeError(f"in 'model': {', '.join(wrong)}", expected="positive integers", where=str(where))
    fits = {"d_vocab": model.get("d_vocab", task.d_vocab) >= task.d_vocab,
            "d_vocab_out": model.get("d_vocab_out", task.p) >= task.p,
            "n_ctx": model.get("n_ctx", task.n_ctx) == task.n_ctx}
    misfits = [f"{name} = {model[name]}" for name, ok in fits.items() if not ok]
    if misfits:
        raise GrokscopeError(f"in 'model': {', '.join(misfits)} for the task {task}",
                             expected=f"d_vocab >= {task.d_vocab}, d_vocab_out >= {task.p}, n_ctx = {task.n_ctx}",
                             where=str(where))
    try:
        cfg = backend.make_config(**model)
    except GrokscopeError as error:
        raise GrokscopeError(f"{error.found}", expected=error.expected, where=str(where)) from None
    except (TypeError, ValueError, AssertionError) as error:
        raise GrokscopeError(f"model fields {sorted(model)} ({error})",
                             expected="HookedTransformerConfig fields", where=str(where)) from None
    check_model_size(cfg, where=str(where))
    return cfg


def _attention_rate(meta: dict, where: Path) -> float:
    alpha = meta.get("attention_rate", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise GrokscopeError(f"attention_rate = {alpha!r}", expected="a number in [0, 1]", where=str(where))
    return float(alpha)


def _train_indices(path: Path, task: Task):
    """The split's ``train_indices``: distinct integer rows of the task's grid, checked."""
    tensors, _ = ck.load_tensors(path)
    rows = tensors.get("train_indices")
    if rows is None:
        raise GrokscopeError(f"tensors {sorted(tensors)}", expected="'train_indices'", where=str(path))
    if rows.ndim != 1 or rows.is_floating_point() or rows.is_complex() or rows.dtype == torch.bool:
        raise GrokscopeError(f"train_indices of dtype {rows.dtype} and shape {tuple(rows.shape)}",
                             expected="a 1-D integer tensor", where=str(path))
    rows = rows.long()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= task.n_inputs):
        raise GrokscopeError(f"train_indices from {int(rows.min())} to {int(rows.max())}",
                             expected=f"rows of the {task.n_inputs}-row grid of p = {task.p} (0..{task.n_inputs - 1})",
                             where=str(path))
    if rows.unique().numel() != rows.numel():
        raise GrokscopeError(f"{rows.numel() - rows.unique().numel()} repeated train_indices",
                             expected="distinct rows", where=str(path))
    return rows


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
    task = _task(meta, meta_path)
    cfg = _model_config(meta, task, meta_path)
    alpha = _attention_rate(meta, meta_path)

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
        train_indices = _train_indices(split_path, task)
    log_path = root / ck.LOG_CSV
    log = ck.read_log(log_path) if log_path.is_file() else None

    return Run(task=task, cfg=cfg, steps=[step for step, _ in found], load_state=load_state,
               source=str(path), format=FORMAT, alpha=alpha,
               train_indices=train_indices, config=meta, log=log, checkpoint_paths=paths)
