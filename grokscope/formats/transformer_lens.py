"""HookedTransformer state dicts: one checkpoint file, or a folder of them named by step.

A file is a ``.safetensors`` or ``.pt``/``.pth`` holding HookedTransformer parameters (bare, or under
``model`` / ``state_dict``): W_E (d_vocab, d_model), W_pos (n_ctx, d_model), W_Q/W_K/W_V (heads,
d_model, d_head), W_O (heads, d_head, d_model), W_in (d_model, d_mlp), W_out (d_mlp, d_model),
W_U (d_model, d_vocab_out), with any biases. Its config, when there is one, is a JSON file beside it
(``<name>.json``, ``<name>.cfg.json``, ``cfg.json`` or ``config.json``), a ``config`` entry in the
pickle (a dict or a HookedTransformerConfig), or a ``config`` string in the safetensors metadata. The
config holds HookedTransformerConfig fields (flat or under ``model``) and optionally
``"task": {"p", "op", "eq_token", "diff_vocab"}``, an attention rate (``attention_rate``, ``alpha`` or
``attn_coeff``) and ``train_indices``. What it leaves out is inferred from the weights
(``grokscope.formats.infer``).

A folder is a run when every checkpoint file in it is named by its step: ``123.pt``, ``step_123``,
``ckpt-123``, ``checkpoint_123``, ``epoch_123``, ``iter_123`` (any checkpoint extension). Files may be
in this layout or the [N23] one (``final.pth`` joins at its recorded epoch, ``init.pth`` gives the train
pairs). Opening the folder reads every file's shapes (headers only where the format allows) to check
they belong to one run; weights are read one file at a time, when a checkpoint is asked for.
"""

import csv
import json
import os
import re
from typing import Any

import torch
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.formats import infer, nanda, safe_load
from grokscope.formats.base import Run

FORMAT = "transformer_lens"

CONFIG_FILES = ("cfg.json", "config.json")
STEP_NAME = re.compile(r"(?i)^(?:(?:step|steps|ckpt|checkpoint|epoch|iter|iteration)[_\-.]?)?(\d+)$")
"""A checkpoint file stem that carries its step."""

TL_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "act_fn", "d_vocab", "d_vocab_out", "n_ctx",
             "normalization_type", "attention_dir", "positional_embedding_type", "attn_only")


# ----- configs ---------------------------------------------------------------------------------

def read_json(path: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a GrokscopeError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise GrokscopeError(f"an unreadable JSON config ({error})", expected="a JSON object", where=path) from None
    if not isinstance(data, dict):
        raise GrokscopeError(f"a JSON {type(data).__name__}", expected="a JSON object", where=path)
    return data


def config_fields(config: Any) -> dict[str, Any]:
    """A config as a plain dict: a dict as is (its ``model`` entry merged in), a HookedTransformerConfig
    (or any object) by its attributes."""
    if config is None:
        return {}
    fields = dict(config) if isinstance(config, dict) else dict(getattr(config, "__dict__", {}))
    if isinstance(fields.get("model"), dict):
        fields = {**fields["model"], **{k: v for k, v in fields.items() if k != "model"}}
    return fields


def hints_from_fields(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """Canonical hints (``infer.infer_model``) from HookedTransformerConfig fields and a ``task`` entry."""
    hints = {k: fields[k] for k in TL_FIELDS if fields.get(k) is not None}
    task = fields.get("task") if isinstance(fields.get("task"), dict) else {}
    for key in ("p", "eq_token", "diff_vocab"):
        value = task.get(key, fields.get(key))
        if value is not None:
            hints[key] = value
    op = task.get("op", fields.get("op"))
    if op is not None:
        hints["op"] = infer.operation_from(op, where)
    return hints


def config_beside(path: str) -> tuple[dict[str, Any], str | None]:
    """The JSON config of a checkpoint file or folder, and its path (empty and None when absent)."""
    if os.path.isdir(path):
        candidates = [os.path.join(path, name) for name in CONFIG_FILES]
    else:
        folder, name = os.path.split(path)
        stem = name.rsplit(".", 1)[0]
        candidates = [os.path.join(folder, f"{stem}{suffix}") for suffix in (".json", ".cfg.json", "_cfg.json",
                                                                             "_config.json")]
        candidates += [os.path.join(folder, name) for name in CONFIG_FILES]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return read_json(candidate), candidate
    return {}, None


def _train_indices(value: Any) -> Tensor | None:
    if value is None:
        return None
    rows = value if isinstance(value, Tensor) else torch.tensor(list(value))
    return rows.flatten().long().sort().values


# ----- one file --------------------------------------------------------------------------------

def hooked_state(obj: Any, where: str) -> tuple[dict[str, Tensor], str, dict[str, Tensor]]:
    """``(state under HookedTransformer names, layout name, original state)`` of a single-model file."""
    state = nanda.model_state(obj)
    if state is None:
        found = infer.describe_keys(obj) if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise GrokscopeError(f"{found} (no state dict)", expected=f"{infer.LAYOUTS}, bare or under 'model'",
                             where=where)
    layout = infer.layout_of(state)
    if layout is None:
        raise GrokscopeError(f"keys {infer.describe_keys(state)}", expected=f"{infer.LAYOUTS} "
                             "(embed.W_E and blocks.0.attn.W_O)", where=where)
    return (nanda.to_hooked(state) if layout == "nanda" else state), layout, state


def matches_object(obj: Any) -> bool:
    """Whether a loaded file is one model in this layout (a 3-D W_O)."""
    state = nanda.model_state(obj)
    return state is not None and infer.layout_of(state) == FORMAT


def matches(path: str) -> bool:
    """Whether ``path`` is a checkpoint file in this layout, or a folder of step-named checkpoints."""
    if os.path.isdir(path):
        return bool(step_files(path))
    try:
        return matches_object(safe_load.load_checkpoint(path))
    except GrokscopeError:
        return False


def read(path: str, *, trust_pickle: bool = False) -> Run:
    """A Run from one checkpoint file, or from a folder of step-named checkpoint files."""
    if os.path.isdir(path):
        return read_folder(path, trust_pickle=trust_pickle)
    return from_object(safe_load.load_checkpoint(path, trust_pickle=trust_pickle), path)


def _wrapper_config(obj: Any, path: str) -> dict[str, Any]:
    wrapper = obj if isinstance(obj, dict) and not infer.is_state_dict(obj) else {}
    for key in ("config", "cfg"):
        if wrapper.get(key) is not None:
            return config_fields(wrapper[key])
    if path.endswith(".safetensors"):
        text = safe_load.safetensors_metadata(path).get("config")
        if text:
            try:
                return config_fields(json.loads(text))
            except ValueError:
                raise GrokscopeError("a safetensors 'config' entry that is not JSON", expected="a JSON object",
                                     where=path) from None
    return {}


def from_object(obj: Any, path: str) -> Run:
    """A one-checkpoint Run from a loaded file in this (or the [N23]) layout."""
    state, layout, original = hooked_state(obj, path)
    fields, config_path = config_beside(path)
    fields = config_fields(fields) if fields else _wrapper_config(obj, path)
    hints = hints_from_fields(fields, config_path or path)
    task, cfg, inferred = infer.infer_model(state, where=path, hints=hints, describe=infer.describe_keys(original))
    wrapper = obj if isinstance(obj, dict) and not infer.is_state_dict(obj) else {}
    step = wrapper.get("step", wrapper.get("epoch"))
    if not isinstance(step, int):
        match = STEP_NAME.match(os.path.basename(path).rsplit(".", 1)[0])
        step = int(match.group(1)) if match else 0

    def load_state(i: int) -> dict[str, Tensor]:
        return infer.prepare_state(state, cfg, where=path)

    alpha = infer.alpha_from(fields, config_path or path)
    run_config = infer.json_safe(fields)
    run_config.update(inferred=inferred, config_file=config_path)
    return Run(task=task, cfg=cfg, steps=[step], load_state=load_state, source=path, format=layout,
               alpha=1.0 if alpha is None else alpha,
               train_indices=_train_indices(fields.get("train_indices", wrapper.get("train_indices"))),
               config=run_config, checkpoint_paths=[path])


# ----- a folder of checkpoints -----------------------------------------------------------------

def step_files(folder: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the checkpoint files of a run folder, ascending; empty when the folder is
    not one (no checkpoint files, or one whose name carries no step)."""
    found, named = [], True
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path) or not name.endswith(safe_load.CHECKPOINT_SUFFIXES):
            continue
        stem = name.rsplit(".", 1)[0]
        if stem in ("init", "final"):
            continue
        match = STEP_NAME.match(stem)
        if match is None:
            named = False
            break
        found.append((int(match.group(1)), path))
    if not named or not found:
        return []
    steps = [step for step, _ in found]
    if len(set(steps)) != len(steps):
        return []
    return sorted(found)


def _extra_file(folder: str, stem: str) -> str | None:
    for suffix in (".pth", ".pt", ".ckpt"):
        if os.path.isfile(os.path.join(folder, stem + suffix)):
            return os.path.join(folder, stem + suffix)
    return None


def _peek(path: str, trust_pickle: bool) -> tuple[dict[str, Tensor], str, dict[str, Tensor], Any]:
    """A file's state (shapes only for safetensors), layout, original state and loaded object."""
    if safe_load.sniff(path) == "safetensors":
        obj: Any = safe_load.safetensors_shapes(path)
    else:
        obj = safe_load.load_checkpoint(path, trust_pickle=trust_pickle)
    state, layout, original = hooked_state(obj, path)
    return state, layout, original, obj


def read_log_csv(path: str) -> dict[str, list] | None:
    """Columns of a ``log.csv`` (step, train_loss, ...) as numbers, or None when the file is absent."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    columns: dict[str, list] = {}
    for key in rows[0]:
        try:
            columns[key] = [int(r[key]) if key == "step" else float(r[key]) if r[key] != "" else float("nan")
                            for r in rows]
        except (TypeError, ValueError):
            continue
    return columns if "step" in columns else None


def read_folder(path: str, *, trust_pickle: bool = False) -> Run:
    """A Run over a folder of step-named checkpoint files (see the module docstring)."""
    files = step_files(path)
    if not files:
        raise GrokscopeError("no checkpoint files named by step", expected="files such as step_100.pt or 100.pth",
                             where=path)
    fields, config_path = config_beside(path)
    fields = config_fields(fields)
    hints = hints_from_fields(fields, config_path or path)
    final = _extra_file(path, "final")
    if final is not None:
        try:
            epoch = _peek(final, trust_pickle)[3].get("epoch")
        except (GrokscopeError, AttributeError):
            epoch = None
        if isinstance(epoch, int) and epoch > files[-1][0]:
            files.append((epoch, final))
    reference: tuple[str, Any, Any, dict] | None = None
    layout = FORMAT
    for step, file in files:
        try:
            state, file_layout, original, _ = _peek(file, trust_pickle)
        except GrokscopeError:
            continue  # unreadable: skipped and recorded when the run is iterated
        task, cfg, inferred = infer.infer_model(state, where=file, hints=hints,
                                                describe=infer.describe_keys(original))
        if reference is None:
            reference, layout = (file, task, cfg, inferred), file_layout
            continue
        _check_same_run(file, task, cfg, inferred, reference)
    if reference is None:
        error = None
        try:
            _peek(files[0][1], trust_pickle)
        except GrokscopeError as first_error:
            error = first_error
        raise GrokscopeError(f"no readable checkpoint among {len(files)} files (first: {error})",
                             expected="at least one readable checkpoint", where=path)
    first_file, task, cfg, inferred = reference
    steps, paths = [s for s, _ in files], [f for _, f in files]

    def load_state(i: int) -> dict[str, Tensor]:
        obj = safe_load.load_checkpoint(paths[i], trust_pickle=trust_pickle)
        state = hooked_state(obj, paths[i])[0]
        return infer.prepare_state(state, cfg, where=paths[i], reference=first_file)

    split = _train_indices(fields.get("train_indices"))
    init = _extra_file(path, "init")
    if split is None and init is not None:
        try:
            pairs = safe_load.load_checkpoint(init, trust_pickle=trust_pickle).get("train_data")
            split = nanda.rows_from_pairs(pairs, task.p) if pairs else None
        except (GrokscopeError, AttributeError, TypeError, IndexError, ValueError):
            split = None
    alpha = infer.alpha_from(fields, config_path or path)
    run_config = infer.json_safe(fields)
    run_config.update(inferred=inferred, config_file=config_path)
    return Run(task=task, cfg=cfg, steps=steps, load_state=load_state, source=path, format=layout,
               alpha=1.0 if alpha is None else alpha, train_indices=split, config=run_config,
               log=read_log_csv(os.path.join(path, "log.csv")), checkpoint_paths=paths)


def _check_same_run(file: str, task: Any, cfg: Any, inferred: dict, reference: tuple) -> None:
    first_file, first_task, first_cfg, _ = reference
    if task.p != first_task.p:
        raise GrokscopeError(f"p = {inferred.get('p', task.p)}",
                             expected=f"p = {first_task.p} as in {first_file} (one run, one task)", where=file)
    for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx"):
        if getattr(cfg, name) != getattr(first_cfg, name):
            raise GrokscopeError(f"{name} = {getattr(cfg, name)}",
                                 expected=f"{name} = {getattr(first_cfg, name)} as in {first_file} (one run, one "
                                          "architecture)", where=file)
