"""Stored references for both TransformerLens lines: logits and hook values of every configuration
grokscope builds and of a model read back from every checkpoint layout.

The references were computed once with TransformerLens 3.x (HookedTransformer) and committed under
``tests/fixtures/tl_reference/``; ``test_backend.py`` recomputes every case with the installed line and
compares. To regenerate them (only after a deliberate change of a case), with 3.x installed:

    python tests/tl_reference.py          # the cases that have no stored reference yet
    python tests/tl_reference.py --all    # every case

Every case is a function returning ``(model, task)``. Its inputs depend on seeds and on files in the
repository only, never on the installed line: weights come from ``models.initial_state`` or from
torch generators, and foreign layouts are written by ``formats_writers`` from such weights.
"""

import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))

from formats_writers import (  # noqa: E402
    hooked_config,
    hooked_state_dict,
    make_model,
    nanda_config_dict,
    nanda_state,
    pickled_config_class,
    tl_fields,
    write_tl,
)

from grokscope import backend  # noqa: E402
from grokscope.constructions import exact_clock_model, exact_pizza_model, random_model  # noqa: E402
from grokscope.formats import load_run, load_runs  # noqa: E402
from grokscope.models import build_model, initial_state, nanda_config, pizza_config  # noqa: E402
from grokscope.tasks import Task  # noqa: E402
from grokscope.training import TrainConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(HERE, "fixtures", "tl_reference")
PIZZA_DIR = os.path.join(HERE, "fixtures", "pizza")
NATIVE_RUN = os.path.join(HERE, "fixtures", "native_run")

N_LOGIT_ROWS = 64
"""Grid rows (evenly spread) whose last-position logits are stored."""
N_HOOK_ROWS = 4
"""The first of those rows whose hook values are stored (keeps the files small)."""

LAYER_HOOKS = ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern", "attn.hook_z",
               "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
               "hook_resid_post")
"""Hooks of each block that both lines fill with the same values. Not ``attn.hook_attn_scores``: on the
4.x bridge of a native model it holds the softmax pattern, not the scaled scores."""
MODEL_HOOKS = ("hook_embed", "hook_pos_embed")


def rows(task: Task) -> torch.Tensor:
    """The stored grid rows: N_LOGIT_ROWS evenly spread over the grid (all of it when smaller)."""
    n = task.n_inputs
    return torch.linspace(0, n - 1, min(N_LOGIT_ROWS, n)).round().long().unique()


def hook_names(model) -> list[str]:
    return list(MODEL_HOOKS) + [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers) for hook in LAYER_HOOKS]


def seeded_biases(model, seed: int):
    """``model`` with every bias (attention and unembedding included) drawn too, so each term counts."""
    state = initial_state(model.cfg)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if name.split(".")[-1].startswith("b_"):
            state[name] = 0.1 * torch.randn(tensor.shape, generator=generator)
    from grokscope.models import attention_rate
    return build_model(model.cfg, attention_rate(model), state)


# ----- the configurations grokscope builds ------------------------------------------------------

def _preset(name: str):
    def case():
        config = TrainConfig.preset(name)
        return config.init_model(), config.task
    return case


def _variant(task: Task, alpha: float, seed: int, **config):
    def case():
        make = nanda_config if task.eq_token else pizza_config
        return seeded_biases(build_model(make(task, seed=seed, **config), alpha), seed + 100), task
    return case


BUILT = {
    "preset_fast": _preset("fast"),
    "preset_nanda": _preset("nanda"),
    "preset_pizza": _preset("pizza"),
    "nanda_relu": _variant(Task(p=23), 1.0, 1, d_model=32, d_mlp=64),
    "nanda_two_layer_gelu": _variant(Task(p=23), 1.0, 2, n_layers=2, d_model=32, d_mlp=64, act_fn="gelu"),
    "pizza_alpha_half": _variant(Task(p=29, eq_token=False), 0.5, 3, d_model=32, d_mlp=64),
    "pizza_gelu_new_diff_vocab": _variant(Task(p=23, eq_token=False, diff_vocab=True), 0.25, 4, d_model=24,
                                          n_heads=2, d_mlp=48, act_fn="gelu_new"),
    "bidirectional_silu_d_head": _variant(Task(p=23), 0.8, 5, n_layers=2, d_model=32, n_heads=2, d_head=8,
                                          d_mlp=40, act_fn="silu", attention_dir="bidirectional"),
    "exact_clock": lambda: (exact_clock_model(Task(p=23), [3, 7]), Task(p=23)),
    "exact_pizza": lambda: (exact_pizza_model(Task(p=23, eq_token=False), [4, 9]), Task(p=23, eq_token=False)),
    "random_model": lambda: (random_model(Task(p=23), seed=3, d_model=32, d_mlp=64), Task(p=23)),
    # other operations: the discrete-log clocks write the zero operand's neuron and unembedding bias
    "exact_clock_sub": lambda: (exact_clock_model(Task(p=23, op="sub"), [3, 7]), Task(p=23, op="sub")),
    "exact_clock_mul": lambda: (exact_clock_model(Task(p=23, op="mul"), [3, 7]), Task(p=23, op="mul")),
    "exact_clock_div": lambda: (exact_clock_model(Task(p=23, op="div", eq_token=False), [5]),
                                Task(p=23, op="div", eq_token=False)),
    "exact_pizza_sub": lambda: (exact_pizza_model(Task(p=23, op="sub", eq_token=False, diff_vocab=True), [4, 9]),
                                Task(p=23, op="sub", eq_token=False, diff_vocab=True)),
}


# ----- a model read back from every checkpoint layout --------------------------------------------

def _read(path: str, task: Task | None = None):
    run = load_run(path)
    assert task is None or run.task == task, (run.task, task)
    return run.model(-1), run.task


def _written(write):
    """A case whose file is written (into a fresh folder) by ``write(folder) -> (path, task)``."""
    def case():
        folder = tempfile.mkdtemp(prefix="tl_reference_")
        try:
            path, task = write(folder)
            return _read(path, task)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return case


def _tl_file(folder, suffix=".safetensors"):
    task = Task(p=23, eq_token=False)
    model = make_model(71, task, alpha=0.5)
    return write_tl(os.path.join(folder, f"model{suffix}"), model, {**tl_fields(model), "alpha": 0.5,
                                                                      "task": {"p": 23, "eq_token": False}}), task


def _tl_folder(folder):
    for step, seed in ((100, 72), (200, 73)):
        write_tl(os.path.join(folder, f"step_{step}.pt"), make_model(seed))
    return folder, Task(p=23)


def _nanda_file(folder):
    task = Task(p=23)
    model = make_model(74, task, attention_biases=False)
    path = os.path.join(folder, "full_run_data.pth")
    torch.save({"state_dicts": [nanda_state(make_model(75, task, attention_biases=False)), nanda_state(model)],
                "checkpoint_epochs": [0, 100], "config": nanda_config_dict(task, model)}, path)
    return path, task


def _tl_demo(folder):
    task = Task(p=23)
    models = [make_model(seed, task, attention_biases=False) for seed in (76, 77)]
    path = os.path.join(folder, "grokking_demo.pth")
    with pickled_config_class():
        torch.save({"model": hooked_state_dict(models[-1]), "config": hooked_config(models[0]),
                    "checkpoints": [hooked_state_dict(m) for m in models], "checkpoint_epochs": [0, 99],
                    "train_losses": [0.1] * 100, "test_losses": [0.2] * 100,
                    "train_indices": torch.arange(0, 529, 3), "test_indices": torch.arange(1, 529, 3)}, path)
    return path, task


def _collection(folder):
    """A folder of independent models in two layouts: the case is the last one (sorted by path)."""
    task = Task(p=23)
    write_tl(os.path.join(folder, "a_model.safetensors"), make_model(78, task))
    model = make_model(79, task, attention_biases=False)
    torch.save({"model": nanda_state(model), "config": nanda_config_dict(task, model)},
               os.path.join(folder, "b_nanda.pth"))
    return folder, task


def _read_collection():
    folder = tempfile.mkdtemp(prefix="tl_reference_")
    try:
        _, task = _collection(folder)
        runs = load_runs(folder)
        assert [run.format for run in runs] == ["transformer_lens", "nanda"], [run.format for run in runs]
        return runs[-1].model(-1), runs[-1].task
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pizza(run_id: str, diff_vocab: bool = False):
    task = Task(p=59, eq_token=False, diff_vocab=diff_vocab)
    return lambda: _read(os.path.join(PIZZA_DIR, f"model_{run_id}.pt"), task)


READ = {
    "format_native": lambda: _read(NATIVE_RUN),
    "format_transformer_lens_file": _written(_tl_file),
    "format_transformer_lens_pt": _written(lambda folder: _tl_file(folder, ".pt")),
    "format_transformer_lens_folder": _written(_tl_folder),
    "format_nanda": _written(_nanda_file),
    "format_tl_demo": _written(_tl_demo),
    "format_pizza_relu": _pizza("p99zdpze5l"),
    "format_pizza_gelu": _pizza("dy65ktpiij"),
    "format_pizza_two_layer": _pizza("h9m153uuh9"),
    "format_pizza_diff_vocab": _pizza("18c9ev5v5p", diff_vocab=True),
    "format_collection": _read_collection,
}

CASES = {**BUILT, **READ}


def compute(name: str) -> dict[str, torch.Tensor]:
    """The tensors stored for case ``name``: logits at ``rows`` and hook values at the first rows."""
    model, task = CASES[name]()
    tokens = task.tokens()[rows(task)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    out = {"rows": rows(task), "logits": logits[:, -1].contiguous()}
    for hook in hook_names(model):
        out[f"hook.{hook}"] = cache[hook][:N_HOOK_ROWS].clone().contiguous()
    return out


def reference_path(name: str) -> str:
    return os.path.join(REFERENCE_DIR, f"{name}.safetensors")


def load_reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(reference_path(name))


def write_native_run() -> None:
    """The committed native run: the ``fast`` recipe, tiny, trained for 40 epochs with TransformerLens 3.x."""
    from grokscope.training import train

    shutil.rmtree(NATIVE_RUN, ignore_errors=True)
    config = TrainConfig.preset("fast", p=23, d_model=16, frac=0.5, epochs=40, checkpoint_every=20, log_every=10,
                                checkpoint_per_decade=0)
    train(config, NATIVE_RUN, progress=False)


def main() -> None:
    if backend.LINE != 3:
        raise SystemExit(f"references are computed with TransformerLens 3.x; this is {backend.VERSION}")
    if not os.path.isdir(NATIVE_RUN):
        write_native_run()
    os.makedirs(REFERENCE_DIR, exist_ok=True)
    for name in CASES:
        if os.path.exists(reference_path(name)) and "--all" not in sys.argv:
            continue  # a stored reference is only recomputed when asked (--all)
        tensors = compute(name)
        save_file(tensors, reference_path(name), metadata={"transformer_lens": backend.VERSION})
        size = os.path.getsize(reference_path(name))
        print(f"{name}: {len(tensors)} tensors, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
