"""gs.analyze over in-memory runs, analytic networks and a trained run."""

import gc
import math
import weakref

import pytest
import torch

from grokscope.analysis import AnalysisResult, analyze, assemble_table, measure_checkpoint
from grokscope.constructions import exact_clock_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.formats.base import Run
from grokscope.fourier import KeyFrequencies, as_freq_list
from grokscope.models import parameter_state_dict
from grokscope.tasks import Task


def memory_run(task, states, steps, cfg, train_indices=None, fail=()):
    """A Run whose checkpoints are state dicts made on demand by ``states(i)``; indices in ``fail`` raise."""
    def load_state(i):
        if i in fail:
            raise GrokscopeError(f"checkpoint {i} is damaged", where=f"mem/step_{i}")
        return states(i)

    return Run(task=task, cfg=cfg, steps=steps, load_state=load_state, source="mem", format="memory",
               train_indices=train_indices, checkpoint_paths=[f"mem/step_{s}" for s in steps])


@pytest.mark.parametrize("task, freqs", [(Task(p=23), [3, 7]), (Task(p=29, eq_token=False), [2, 11])])
def test_single_clock_model_without_split(task, freqs):
    model = exact_clock_model(task, freqs)
    state = parameter_state_dict(model)
    run = memory_run(task, lambda i: state, steps=[500], cfg=model.cfg)
    result = analyze(run, classify=lambda m, t: ("clock", t.p),
                     inspect_final={"d_mlp": lambda m, t: m.cfg.d_mlp, "bad": lambda m, t: as_freq_list([0], t.p)},
                     views=False)
    assert result.key_freqs.freqs == freqs and result.key_freqs.rule == "A"
    row = result.final_row
    assert row["step"] == 500 and row["full_acc"] == 1.0
    assert row["restricted_loss"] <= row["full_loss"] * (1 + 1e-5) and row["full_loss"] < 1e-5
    assert row["excluded_loss"] == pytest.approx(math.log(task.p), abs=1e-3)
    assert all(math.isnan(row[c]) for c in ("train_loss", "test_loss", "train_acc", "test_acc"))
    # One checkpoint and no curves: no history, so no phases (not "grokking at step 500").
    assert not result.phases.available and result.phases.grokking_step is None
    assert result.phases.memorization_step is None and "not available" in result.phases.method["phases"]
    assert result.classification == ("clock", task.p)
    assert result.final_extras == {"d_mlp": len(freqs) * task.p ** 2}
    assert any(note.startswith("bad: ") for note in result.notes)
    assert any("split unknown" in note for note in result.notes)
    assert set(row) >= {f"excluded_loss_k{k}" for k in freqs}


def test_fixed_and_given_key_frequencies():
    task = Task(p=23)
    clock = exact_clock_model(task, [3, 7])
    state = parameter_state_dict(clock)
    run = memory_run(task, lambda i: state, steps=[0, 1], cfg=clock.cfg, train_indices=task.split(0.3, 0))
    given = analyze(run, key_freqs=[3], classify=None)
    assert given.key_freqs.freqs == [3] and given.key_freqs.rule == "given"
    assert "excluded_loss_k7" not in given.table
    # Removing only k = 3 from an exact two-frequency clock leaves k = 7 to classify: low loss, far above full.
    assert given.final_row["excluded_loss"] > 1e3 * given.final_row["full_loss"]
    assert given.classification is None
    with pytest.raises(GrokscopeError, match="recompute_key_freqs"):
        analyze(run, key_freqs=[3], recompute_key_freqs=True)
    with pytest.raises(GrokscopeError, match="1..11"):
        analyze(run, key_freqs=KeyFrequencies([3, 40], "A", 0.85))


def test_key_frequencies_recomputed_per_checkpoint():
    task = Task(p=23)
    models = [exact_clock_model(task, freqs) for freqs in ([2, 5], [4, 9], [6, 10])]   # equal shapes
    cfg = models[0].cfg
    states = [parameter_state_dict(m) for m in models]
    run = memory_run(task, lambda i: states[i], steps=[0, 10, 20], cfg=cfg)
    result = analyze(run, recompute_key_freqs=True, classify=None)
    assert result.key_freqs_by_step == {0: [2, 5], 10: [4, 9], 20: [6, 10]}
    assert result.key_freqs.freqs == [6, 10]
    # Per-frequency columns of other checkpoints are NaN.
    assert math.isnan(result.table["excluded_loss_k2"][2]) and not math.isnan(result.table["excluded_loss_k2"][0])
    fixed = analyze(run, classify=None)
    assert fixed.key_freqs_by_step is None and fixed.key_freqs.freqs == [6, 10]


def test_skipped_checkpoints_and_unreadable_final():
    task = Task(p=23)
    clock = exact_clock_model(task, [3, 8])
    state = parameter_state_dict(clock)
    run = memory_run(task, lambda i: state, steps=[0, 10, 20, 30], cfg=clock.cfg, fail={1, 3})
    result = analyze(run, classify=None)
    assert result.steps == [0, 20]
    assert result.key_freqs.freqs == [3, 8]          # from step 20, the last readable checkpoint
    assert [entry["path"] for entry in result.skipped] == ["mem/step_10", "mem/step_30"]
    assert "damaged" in result.skipped[0]["error"]
    with pytest.raises(GrokscopeError, match=r"^mem: found no readable checkpoint among 2 \(first: mem/step_0: "
                                             r"checkpoint 0 is damaged\); expected at least one readable checkpoint$"):
        analyze(memory_run(task, lambda i: state, steps=[0, 10], cfg=clock.cfg, fail={0, 1}), classify=None)
    with pytest.raises(GrokscopeError, match=r"^mem/step_0: checkpoint 0 is damaged$"):  # one model: its own error
        analyze(memory_run(task, lambda i: state, steps=[0], cfg=clock.cfg, fail={0}), classify=None)


def test_operations_without_a_group_are_analysed_with_a_note():
    task = Task(p=23, op="a^2+b^2")
    model = random_model(task, 0, d_model=32, d_mlp=64)
    state = parameter_state_dict(model)
    run = memory_run(task, lambda i: state, steps=[0], cfg=model.cfg, train_indices=task.split(0.5, 0))
    result = analyze(run, classify=None)
    row = result.final_row
    assert math.isfinite(row["train_loss"]) and math.isnan(row["restricted_loss"])
    assert any("'a^2+b^2'" in note and "not defined" in note for note in result.notes)


def test_views_of_a_result():
    task = Task(p=23)
    clock = exact_clock_model(task, [3, 8])
    state = parameter_state_dict(clock)
    run = memory_run(task, lambda i: state, steps=list(range(0, 80, 10)), cfg=clock.cfg,
                     train_indices=task.split(0.3, 0))
    result = analyze(run, classify=None)
    assert isinstance(result, AnalysisResult)
    text = repr(result)
    assert "p=23" in text and "[3, 8]" in text and "grokked at step 0" in text and len(text) < 400
    html = result._repr_html_()
    assert html.count("<table") == 2 and "more" in html and "restricted_loss" in html
    pandas = pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and frame.shape[0] == 8 and list(frame.columns)[0] == "step"
    assert result.final_row["step"] == 70
    titles = [title for title, _ in result.figures()]
    assert titles == ["Loss and accuracy", "Restricted and excluded loss", "Sparsity and weight norm",
                      "Train-only measures", "Embedding Fourier norms", "Neuron frequency clusters", "Embedding circles",
                      "Correct-class logit over (a+b, a-b)"]
    view = result.final_extras["views"]
    assert sorted(int(k) for k in view["embedding_norms"].argsort()[-2:] + 1) == [3, 8]
    assert {circle["k"] for circle in view["circles"][:2]} == {3, 8}
    assert view["logit_grid"].std() < 1e-6 * abs(view["logit_grid"]).max()  # an exact clock: constant


def test_measure_checkpoint_and_assemble_table_are_the_worker_seam():
    task = Task(p=23)
    clock = exact_clock_model(task, [3, 8])
    row, notes, own = measure_checkpoint(clock, task, None)
    assert own.freqs == [3, 8] and notes == [] and row["full_acc"] == 1.0
    table = assemble_table([(20, {"a": 1.0}), (10, {"a": 2.0, "b": 3.0})])
    assert table["step"] == [10, 20] and table["a"] == [2.0, 1.0]
    assert table["b"][0] == 3.0 and math.isnan(table["b"][1])


class CountingRun(Run):
    """A Run that records, at every load, how many of its models are alive and how many tensor bytes."""

    def model(self, i: int = -1):
        model = super().model(i)
        self.live = [ref for ref in getattr(self, "live", []) if ref() is not None] + [weakref.ref(model)]
        self.max_live = max(getattr(self, "max_live", 0), len(self.live))
        self.tensor_bytes = getattr(self, "tensor_bytes", []) + [_live_tensor_bytes()]
        return model


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage the garbage collector can see."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu" and obj.layout == torch.strided:
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def memory_probe_run(n: int, keep: bool = False) -> CountingRun:
    task = Task(p=23)
    base = random_model(task, 0, d_model=64, d_mlp=256)                 # 0.22 MB of float32 weights
    weights = parameter_state_dict(base)

    def states(i):
        return {name: value + 1e-3 * i for name, value in weights.items()}

    return CountingRun(task=task, cfg=base.cfg, steps=list(range(n)), load_state=states, source="mem",
                       format="memory", train_indices=task.split(0.3, 0))


def test_memory_does_not_grow_with_checkpoints():
    n = 16
    run = memory_probe_run(n)
    result = analyze(run, classify=None)
    assert len(result.steps) == n
    assert run.max_live <= 2                 # the one being measured, and the final one while it is read
    # Kept models would add 0.22 MB each (2.6 MB across the last 12 loads); allow 0.1 MB of drift.
    growth = max(run.tensor_bytes[n // 4:]) - run.tensor_bytes[n // 4]
    assert growth < 1e5, f"live tensors grew {growth / 1e6:.2f} MB over {n - n // 4} checkpoints"
    for values in result.table.values():
        assert all(type(v) in (int, float) for v in values)


def test_the_memory_probe_sees_kept_models():
    run = memory_probe_run(8)
    kept = [run.model(i) for i in range(8)]
    assert run.max_live == 8
    assert run.tensor_bytes[-1] - run.tensor_bytes[0] > 7 * 0.2e6
    del kept


# ----- a trained run ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_result(fast_run_dir):
    from grokscope.formats import native

    return analyze(native.read(fast_run_dir), classify=None)


@pytest.mark.slow
def test_trained_run_follows_the_phases_of_nanda_et_al(trained_result):
    r = trained_result
    t, ph = r.table, r.phases
    steps = t["step"]
    at = {s: i for i, s in enumerate(steps)}
    assert r.key_freqs.freqs, r.key_freqs.detail
    assert ph.grokked and ph.memorization_step is not None
    mem, grok = at[ph.memorization_step], at[ph.grokking_step]
    # memorisation < circuit formation end <= grokking <= cleanup end
    assert ph.memorization_step < ph.circuit_formation_end <= ph.grokking_step <= ph.cleanup_end_step
    # Excluded loss rises before grokking while train loss stays low.
    start = at[ph.circuit_formation_start]
    assert mem <= start < grok
    assert t["excluded_loss"][grok] > 3 * t["excluded_loss"][start]
    assert max(t["train_loss"][start:grok + 1]) < 0.1
    # Restricted loss falls before test loss: at the cleanup start it has fallen further (in log) than the test loss.
    cf_end = at[ph.circuit_formation_end]
    peak = max(range(mem, grok + 1), key=lambda i: t["test_loss"][i])
    restricted_fall = math.log(t["restricted_loss"][peak] / t["restricted_loss"][cf_end])
    test_fall = math.log(t["test_loss"][peak] / t["test_loss"][cf_end])
    assert restricted_fall > test_fall
    # Gini rises during cleanup; the final excluded loss stays far above the train loss.
    cl_end = at[ph.cleanup_end_step]
    assert t["gini_W_E"][cl_end] > t["gini_W_E"][cf_end] and t["gini_W_L"][cl_end] > t["gini_W_L"][cf_end]
    final = r.final_row
    assert final["test_acc"] >= 0.99 and final["excluded_loss"] > 10 * final["train_loss"]
    assert final["restricted_loss"] < final["full_loss"]      # as in [N23]: 5.5e-8 below 2.41e-7
