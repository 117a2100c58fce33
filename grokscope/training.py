"""Training runs into the native run format: one run (``train``) or many at once (``train_members``).

Both drive the batched engine (``grokscope.engine``): ``train`` is the M = 1 case. Members of one
call share an architecture and a number of epochs; each keeps its own seed, split, attention rate,
AdamW and Grokfast settings, and is written as an ordinary native run (``formats.native``) into its
own folder, loadable as a HookedTransformer.

Step s means "after s optimiser updates"; checkpoint s and log row s describe the same weights. At a
checkpoint step a member's files are written in the order checkpoint, log.csv, resume state, each
atomically, so a run killed at any moment resumes from its newest complete checkpoint when trained
again with the same config and folder, and ends bitwise identical to an uninterrupted run (same
machine, thread count and batch of members).

>>> import tempfile
>>> run = train(TrainConfig.preset("fast", p=13, d_model=16, epochs=3), tempfile.mkdtemp(), progress=False)
>>> run.steps, run.log["step"]
([0, 1, 2, 3], [0, 3])
"""

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import grokscope
from grokscope import backend
from grokscope import checkpoints as ck
from grokscope.engine import (FROZEN_PARAMETERS, Architecture, MemberRows, MemberSettings, StackedAdamW,
                              StackedGrokfast, StepValues, activation_bytes_per_member, available_memory,
                              evaluation_rows_per_pass, member_state_dict,
                              members_per_chunk, micro_batch_size, stack_parameters, state_bytes_per_member,
                              train_pass)
from grokscope.errors import GrokscopeError
from grokscope.formats import native
from grokscope.formats.base import Run
from grokscope.monitor import LOG_MONITOR_COLUMNS, TrainOnlyMonitor, detect_phases
from grokscope.progress import progress_bar
from grokscope.recipes import MODEL_FIELDS, PRESETS, TrainConfig, preserved_global_rng  # noqa: F401 (re-exported)
from grokscope.tasks import held_out_mask

MEMORY_BUDGET_FRACTION = 0.8
"""Share of the device's free memory one stack of members may plan to use."""

ACCURACY_MARK = 0.99
"""Accuracy that counts as memorised (train) or generalised (test) in the progress bar and summaries."""


def run_metadata(config: TrainConfig, finished: bool = False, wall_time_s: float | None = None,
                 **status: Any) -> dict:
    """The content of run.json for ``config``."""
    cfg = config.model_config()
    return {
        "format": ck.FORMAT_NAME,
        "format_version": ck.FORMAT_VERSION,
        "grokscope_version": grokscope.__version__,
        "task": config.task.to_dict(),
        "model": {name: getattr(cfg, name) for name in MODEL_FIELDS},
        "attention_rate": config.alpha,
        "optimizer": {"name": "AdamW", "lr": config.lr, "weight_decay": config.weight_decay,
                      "betas": list(config.betas), "batch": "full",
                      "frozen_at_zero": list(FROZEN_PARAMETERS),
                      "grokfast": {"alpha": config.grokfast_alpha, "lamb": config.grokfast_lamb}
                      if config.grokfast else None},
        "schedule": {"epochs": config.epochs, "checkpoint_every": config.checkpoint_every,
                     "checkpoint_per_decade": config.checkpoint_per_decade, "log_every": config.log_every},
        "seeds": {"init": config.seed, "split": config.split_seed},
        "train_config": config.to_dict(),
        "status": {"finished": finished, "wall_time_s": wall_time_s, **status},
    }


def _config_differences(saved: dict, config: TrainConfig) -> list[str]:
    wanted = json.loads(json.dumps(config.to_dict()))
    names = list(wanted) + sorted(set(saved) - set(wanted))
    return [f"{name} = {saved.get(name, '(absent)')!r} there but {wanted.get(name, '(absent)')!r} here"
            for name in names if saved.get(name, "(absent)") != wanted.get(name, "(absent)")]


def _prepare_folder(out: Path, config: TrainConfig) -> dict | None:
    """Check ``out`` can hold this run; returns the saved run.json, or None for a new run."""
    if out.exists() and not out.is_dir():
        raise GrokscopeError("a file", expected="a folder for the run (or a new path)", where=str(out))
    run_json = out / ck.RUN_JSON
    if run_json.exists():
        saved = ck.read_json(run_json)
        if saved.get("format") != ck.FORMAT_NAME or not isinstance(saved.get("train_config"), dict):
            raise GrokscopeError("a run.json that is not a grokscope run", expected="a grokscope run folder",
                                 where=str(run_json))
        differences = _config_differences(saved["train_config"], config)
        if differences:
            raise GrokscopeError(f"a run of a different configuration ({'; '.join(differences)})",
                                 expected="the same settings to resume it, or another --out folder",
                                 where=str(out))
        return saved
    if out.is_dir() and any(not ck.is_bookkeeping(entry.name) for entry in out.iterdir()):
        raise GrokscopeError("a non-empty folder without run.json",
                             expected="a new or empty folder, or a grokscope run to resume", where=str(out))
    return None


def train(config: TrainConfig, out: str | Path, *, progress: bool = True, device: str = "cpu") -> Run:
    """Train ``config`` into the native run folder ``out`` and return it read back (``formats.native.read``).

    Resumes an interrupted run of the same config in ``out``; returns a finished one as it is; refuses
    (GrokscopeError) a folder holding a run of another config, naming the settings that differ.
    ``progress`` draws a progress bar (tqdm) when stderr is a terminal or in a notebook.
    """
    return train_members([config], [out], progress=progress, device=device)[0]


@dataclass
class _Member:
    """One member's run while it trains: its config, folder, split, log and resume point."""

    config: TrainConfig
    out: Path
    train_indices: Tensor
    start: int = 0
    elapsed: float = 0.0
    log: dict[str, list] = field(default_factory=lambda: {column: [] for column in ck.LOG_COLUMNS})
    resume_tensors: dict[str, Tensor] | None = None
    schedule: frozenset[int] = frozenset()
    monitor: TrainOnlyMonitor | None = None


def stack_key(config: TrainConfig) -> tuple:
    """What members must share to train in one stack: the architecture and the number of epochs."""
    return (Architecture.from_config(config.model_config()), config.epochs)


def _check_batch(configs: list[TrainConfig], outs: list[Path]) -> None:
    if not configs or len(configs) != len(outs):
        raise GrokscopeError(f"{len(configs)} configs for {len(outs)} folders",
                             expected="one folder per config, at least one", where="train_members")
    for config in configs:
        if not isinstance(config, TrainConfig):
            raise GrokscopeError(f"a {type(config).__name__}", expected="a TrainConfig", where="train")
    resolved = [out.resolve() for out in outs]
    if len(set(resolved)) != len(resolved):
        raise GrokscopeError("the same folder for two members", expected="one folder per member",
                             where="train_members")
    first = stack_key(configs[0])
    for i, config in enumerate(configs[1:], start=1):
        if stack_key(config) != first:
            raise GrokscopeError(f"member {i} with architecture/epochs {stack_key(config)}",
                                 expected=f"the same as member 0: {first}", where="train_members")


def _start_member(config: TrainConfig, out: Path) -> _Member | None:
    """Prepare ``out`` for ``config``; None when it holds the finished run already."""
    saved = _prepare_folder(out, config)
    if saved is not None and saved.get("status", {}).get("finished"):
        (out / ck.RESUME_FILE).unlink(missing_ok=True)
        return None
    checkpoint_dir = out / ck.CHECKPOINT_DIR
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out, checkpoint_dir):
        ck.remove_temporaries(folder)
    if saved is None:
        ck.write_json(out / ck.RUN_JSON, run_metadata(config))
    task, train_idx = config.task, config.train_indices()
    split_path = out / ck.SPLIT_FILE
    if not split_path.exists() or not torch.equal(ck.load_tensors(split_path)[0].get("train_indices"),
                                                  train_idx):
        ck.save_tensors(split_path, {"train_indices": train_idx},
                        metadata={"frac": repr(config.frac), "split_seed": str(config.split_seed),
                                  "n_inputs": str(task.n_inputs)})
    member = _Member(config, out, train_idx, schedule=frozenset(config.checkpoint_steps()),
                     log={column: [] for column in (*ck.LOG_COLUMNS, *LOG_MONITOR_COLUMNS)},
                     monitor=TrainOnlyMonitor(task, train_idx))  # train rows only: no test set needed
    resume_path, log_path = out / ck.RESUME_FILE, out / ck.LOG_CSV
    if resume_path.exists():
        tensors, metadata = ck.load_tensors(resume_path)
        if "step" not in metadata:
            raise GrokscopeError("a resume state without a step", expected="a grokscope resume file",
                                 where=str(resume_path))
        member.resume_tensors, member.start = tensors, int(metadata["step"])
        member.elapsed = float(metadata.get("elapsed_s", 0.0))
        if log_path.exists():
            member.log = _with_monitor_columns(ck.truncate_log(ck.read_log(log_path), member.start - 1))
            member.monitor.replay(member.log)
    return member


def _with_monitor_columns(log: dict[str, list]) -> dict[str, list]:
    """A log read back, with empty train-only columns added where an older version wrote none."""
    n = len(log["step"])
    for column in LOG_MONITOR_COLUMNS:
        log.setdefault(column, [math.nan] * n if column != LOG_MONITOR_COLUMNS[-1] else [""] * n)
    return log


def train_members(configs: list[TrainConfig], outs: list[str | Path], *, progress: bool = True,
                  device: str = "cpu", max_members: int | None = None) -> list[Run]:
    """Train several runs of one architecture and one number of epochs together, each into its own folder.

    All members step together in one stack (``grokscope.engine``), in chunks of at most ``max_members``
    (default: as many as fit in the free memory of ``device``). Each folder is resumed, returned or
    refused exactly as ``train`` does for one, and each folder's lock (``checkpoints.run_lock``) is held
    throughout: a second trainer on any of them gets GrokscopeError naming the holder's pid. Returns the
    runs in the order of ``configs``.
    """
    outs = [Path(out) for out in outs]
    configs = list(configs)
    _check_batch(configs, outs)
    device = _check_device(device)
    with contextlib.ExitStack() as locks:
        for out in outs:  # one trainer per folder; the OS drops a lock when its holder dies
            locks.enter_context(ck.run_lock(out))
        _train_locked(configs, outs, device, progress, max_members)
    return [native.read(out) for out in outs]


def _train_locked(configs: list[TrainConfig], outs: list[Path], device: torch.device, progress: bool,
                  max_members: int | None) -> None:
    members = [member for member in (_start_member(c, o) for c, o in zip(configs, outs)) if member is not None]
    if members:
        arch = Architecture.from_config(members[0].config.model_config())
        n_rows = members[0].config.task.n_inputs  # an upper bound of any member's train or test rows
        state = state_bytes_per_member(arch, any(m.config.grokfast for m in members))
        activations = activation_bytes_per_member(arch, n_rows)
        micro = micro_batch_size(n_rows, device)
        budget = int(available_memory(device) * MEMORY_BUDGET_FRACTION)
        if micro >= len(members):  # one pass holds every member's activations
            per_chunk = members_per_chunk(len(members), state + activations, budget)
        else:
            per_chunk = members_per_chunk(len(members), state, budget, fixed_bytes=activations * micro)
        if max_members is not None:
            per_chunk = min(per_chunk, max(int(max_members), 1))
        for begin in range(0, len(members), per_chunk):
            _train_chunk(members[begin:begin + per_chunk], arch, device, progress)


def _check_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise GrokscopeError(f"device {device!r}", expected="cpu, cuda or cuda:N", where="train") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GrokscopeError(f"device {device!r} but no CUDA GPU is available", expected="cpu here",
                             where="train")
    if resolved.type not in ("cpu", "cuda"):
        raise GrokscopeError(f"device {device!r}", expected="cpu or cuda", where="train")
    return resolved


def _train_chunk(members: list[_Member], arch: Architecture, device: torch.device, progress: bool) -> None:
    """Bring every member to the same step (catching up the ones a kill left behind), then train them."""
    while True:
        starts = sorted({member.start for member in members})
        if len(starts) == 1:
            _train_stack(members, arch, device, progress, stop=None)
            return
        lagging = [member for member in members if member.start == starts[0]]
        _train_stack(lagging, arch, device, progress, stop=starts[1])
        for member in lagging:
            caught_up = _start_member(member.config, member.out)
            member.start, member.resume_tensors, member.log = caught_up.start, caught_up.resume_tensors, caught_up.log
            member.elapsed, member.monitor = caught_up.elapsed, caught_up.monitor


def _initial_state(member: _Member) -> dict[str, Tensor]:
    if member.resume_tensors is not None:
        return {name.removeprefix("param."): t for name, t in member.resume_tensors.items() if name.startswith("param.")}
    with preserved_global_rng():
        model = member.config.init_model()
    return {name: tensor.detach().clone() for name, tensor in backend.weights(model).items()}


def _settings(members: list[_Member]) -> MemberSettings:
    configs = [member.config for member in members]
    return MemberSettings.from_values(
        alpha=[c.alpha for c in configs], lr=[c.lr for c in configs],
        weight_decay=[c.weight_decay for c in configs], beta1=[c.betas[0] for c in configs],
        beta2=[c.betas[1] for c in configs], grokfast_alpha=[c.grokfast_alpha for c in configs],
        grokfast_lamb=[c.grokfast_lamb if c.grokfast else 0.0 for c in configs])


class _Stack:
    """The engine state of a list of members: stacked parameters, optimiser, Grokfast EMA and rows."""

    def __init__(self, members: list[_Member], arch: Architecture, device: torch.device):
        self.members, self.arch, self.device = members, arch, device
        states = [_initial_state(member) for member in members]
        expected_order = list(arch.parameter_shapes())
        expected = set(expected_order)
        for member, state in zip(members, states):
            if set(state) != expected:
                raise GrokscopeError(f"parameters {sorted(set(state) ^ expected)[:4]} differing",
                                     expected="this run's model", where=str(member.out / ck.RESUME_FILE))
        # One fixed order (the architecture's), whether the weights come from an init or a resume file
        # (safetensors sorts names): sums over parameters then add in the same order either way.
        self.params = stack_parameters([{name: state[name] for name in expected_order} for state in states], device)
        self.trainable = [name for name in self.params if not name.endswith(FROZEN_PARAMETERS)]
        self.settings = _settings(members)
        self.alpha = self.settings.alpha.to(device=device, dtype=torch.float32)
        self.adam = StackedAdamW(self.settings, device=device)
        self.grokfast = StackedGrokfast(self.settings, device=device) if any(m.config.grokfast for m in members) else None
        start = members[0].start
        self.adam.step_count = start
        if members[0].resume_tensors is not None:
            self._load_optimiser_state()
        else:
            self.adam.init_state({name: self.params[name] for name in self.trainable})
        task = members[0].config.task
        tokens, labels = task.tokens(), task.labels()
        test_indices = [torch.nonzero(held_out_mask(task.n_inputs, m.train_indices))[:, 0] for m in members]
        self.train_rows = MemberRows.from_indices(tokens, labels, [m.train_indices for m in members], device)
        self.test_rows = MemberRows.from_indices(tokens, labels, test_indices, device)
        self.micro_batch = micro_batch_size(self.train_rows.tokens.shape[1], device)

    def _load_optimiser_state(self) -> None:
        for kind, target in (("exp_avg", self.adam.exp_avg), ("exp_avg_sq", self.adam.exp_avg_sq)):
            for name in self.trainable:
                target[name] = stack_parameters([{name: m.resume_tensors[f"adam.{kind}.{name}"]}
                                                 for m in self.members], self.device)[name]
        if self.grokfast is not None and all(f"grokfast.{self.trainable[0]}" in m.resume_tensors
                                             for m in self.members):
            self.grokfast.mu = {name: stack_parameters([{name: m.resume_tensors[f"grokfast.{name}"]}
                                                        for m in self.members], self.device)[name]
                                for name in self.trainable}

    def resume_state(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s resume tensors: parameters, AdamW moments and step, Grokfast EMA."""
        tensors = {f"param.{name}": t for name, t in member_state_dict(self.params, index).items()}
        for name in self.trainable:
            tensors[f"adam.exp_avg.{name}"] = self.adam.exp_avg[name][index].detach().cpu()
            tensors[f"adam.exp_avg_sq.{name}"] = self.adam.exp_avg_sq[name][index].detach().cpu()
            tensors[f"adam.step.{name}"] = torch.tensor(float(self.adam.step_count))
            if self.grokfast is not None and name in self.grokfast.mu:
                tensors[f"grokfast.{name}"] = self.grokfast.mu[name][index].detach().cpu()
        return tensors

    def pass_over(self, rows: MemberRows, gradients: bool, accuracy: bool, logits: bool = False) -> StepValues:
        return train_pass(self.params, self.trainable, self.arch, rows, self.alpha, micro_batch=self.micro_batch,
                          gradients=gradients, accuracy=accuracy, keep_logits=logits,
                          rows_per_pass=evaluation_rows_per_pass(min(self.micro_batch, len(self.members)),
                                                                 rows.tokens.shape[1], self.device))

    def monitor_rows(self, values: StepValues, step: int, logging: list[bool]) -> list[dict | None]:
        """Each logging member's train-only columns (``grokscope.monitor``) from this step's train logits."""
        rows = []
        for index, member in enumerate(self.members):
            if not logging[index]:
                rows.append(None)
                continue
            count = int(self.train_rows.counts[index])
            logits = values.logits[index, :count].detach().cpu()
            rows.append(member.monitor.measure(member_state_dict(self.params, index), step, train_logits=logits))
        return rows

    def metrics(self, train: StepValues) -> Tensor:
        """(M, 4) float64: train loss, test loss, train accuracy, test accuracy of the current weights."""
        test = self.pass_over(self.test_rows, gradients=False, accuracy=True)
        return torch.stack([train.losses, test.losses, train.accuracy, test.accuracy], dim=1)


def _train_stack(members: list[_Member], arch: Architecture, device: torch.device, progress: bool,
                 stop: int | None) -> None:
    """Train ``members`` (all at the same start step) to their last epoch, or to ``stop`` and save there."""
    stack = _Stack(members, arch, device)
    epochs, start = members[0].config.epochs, members[0].start
    end = epochs if stop is None else stop
    log_every = [member.config.log_every for member in members]
    pending: list[tuple[int, Tensor, list[bool], list[dict | None]]] = []
    clock = time.perf_counter()
    bar = _progress_bar(members, start, end, progress)
    try:
        for step in range(start, end + 1):
            last = step == epochs
            logging = [step % every == 0 or last for every in log_every]
            values = stack.pass_over(stack.train_rows, gradients=not last and step != stop, accuracy=any(logging),
                                     logits=any(logging))
            if any(logging):
                pending.append((step, stack.metrics(values), logging, stack.monitor_rows(values, step, logging)))
            # A resumed member's files at its start step are complete already: leave them untouched.
            saving = [(step in member.schedule or step == stop) and not (step == start and member.resume_tensors)
                      for member in members]
            if any(saving) or device.type == "cpu":
                _flush_logs(members, pending, bar)
            if any(saving):
                elapsed = time.perf_counter() - clock
                for index, member in enumerate(members):
                    if saving[index]:
                        _save_member_step(stack, index, member, step, last, elapsed)
            if last or step == stop:
                break
            if stack.grokfast is not None:
                stack.grokfast.apply(values.grads)
            stack.adam.step(stack.params, values.grads)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if stop is None:
        wall = time.perf_counter() - clock
        for member in members:
            status = {"wall_time_s": round(member.elapsed + wall, 3), "members_in_stack": len(members),
                      "device": str(device), "monitor_s": round(member.monitor.seconds, 3)}
            ck.write_json(member.out / ck.RUN_JSON, run_metadata(member.config, finished=True, **status))
            (member.out / ck.RESUME_FILE).unlink(missing_ok=True)


def _flush_logs(members: list[_Member], pending: list, bar) -> None:
    """Move the metrics held on the device into each member's log (one host transfer for all rows)."""
    if not pending:
        return
    values = torch.stack([metrics for _, metrics, _, _ in pending]).cpu().tolist()
    for (step, _, logging, monitored), rows in zip(pending, values):
        for index, member in enumerate(members):
            if logging[index]:
                for column, value in zip(ck.LOG_COLUMNS, (step, *rows[index])):
                    member.log[column].append(value)
                for column, value in monitored[index].items():
                    member.log[column].append(value)
    if bar is not None:
        latest = values[-1]
        if len(members) == 1:
            train_loss, test_loss, train_acc, test_acc = latest[0]
            bar.set_postfix(train_acc=f"{train_acc:.3f}", test_acc=f"{test_acc:.3f}",
                            train_loss=f"{train_loss:.2e}", test_loss=f"{test_loss:.2e}",
                            phase=members[0].monitor.phase, refresh=False)
        else:
            memorised = sum(row[2] >= ACCURACY_MARK for row in latest)
            grokked = sum(row[3] >= ACCURACY_MARK for row in latest)
            bar.set_postfix(memorised=f"{memorised}/{len(members)}", grokked=f"{grokked}/{len(members)}",
                            refresh=False)
    pending.clear()


def _save_member_step(stack: _Stack, index: int, member: _Member, step: int, last: bool, elapsed: float) -> None:
    """Checkpoint, log.csv, then the resume state: a kill between them resumes from the previous state.

    A step off the member's schedule (where a catching-up stack stops) gets no checkpoint, only the rest.
    """
    if step in member.schedule:
        ck.save_tensors(member.out / ck.CHECKPOINT_DIR / ck.checkpoint_filename(step),
                        member_state_dict(stack.params, index), metadata={"step": str(step)})
    ck.atomic_write(member.out / ck.LOG_CSV, ck.log_to_csv(member.log))
    if not last:
        ck.save_tensors(member.out / ck.RESUME_FILE, stack.resume_state(index),
                        metadata={"step": str(step), "elapsed_s": repr(member.elapsed + elapsed)})


def _progress_bar(members: list[_Member], start: int, end: int, enabled: bool):
    task = members[0].config.task
    desc = f"train p={task.p} {task.op}" + (f" x{len(members)}" if len(members) > 1 else "")
    return progress_bar(end, desc=desc, initial=start, enabled=enabled, unit="epoch")


def first_step_at(log: dict[str, list], column: str, threshold: float = 0.99) -> int | None:
    """The first logged step where ``column`` reaches ``threshold`` (None if never)."""
    for step, value in zip(log["step"], log[column]):
        if value >= threshold:
            return int(step)
    return None


def summarize(run) -> dict[str, Any]:
    """Headline figures of a native run: epochs of train and test accuracy >= 99%, their ratio, finals."""
    log = run.log or {column: [] for column in ck.LOG_COLUMNS}
    train_99, test_99 = first_step_at(log, "train_acc"), first_step_at(log, "test_acc")
    # The final row of the five classic columns; the train-only ones are summarised by "train_only".
    final = {column: log[column][-1] for column in ck.LOG_COLUMNS} if log["step"] else {}
    detection = None
    if log["step"] and "trainonly_restricted_loss" in log:
        detection = detect_phases(log, run.task.p)[0]
    return {
        "train_99_step": train_99,
        "test_99_step": test_99,
        "delay_ratio": test_99 / train_99 if train_99 and test_99 is not None else None,
        "final": final,
        "checkpoints": len(run.steps),
        "wall_time_s": run.config.get("status", {}).get("wall_time_s"),
        "monitor_s": run.config.get("status", {}).get("monitor_s"),
        "train_only": detection.to_dict() if detection is not None else None,
    }
