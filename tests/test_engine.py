"""The batched training engine: its forward against the HookedTransformer, AdamW and Grokfast per member,
and members trained in a stack against the same runs trained alone."""

import math
from pathlib import Path

import pytest
import torch

from grokscope import backend, engine
from grokscope import checkpoints as ck
from grokscope.engine import (Architecture, MemberRows, MemberSettings, StackedAdamW,
                              StackedGrokfast, activation_bytes_per_member, evaluation_rows_per_pass, fused_readout,
                              member_nll, members_per_chunk, stack_parameters, stacked_logits, state_bytes_per_member,
                              train_pass)
from grokscope.errors import GrokscopeError
from grokscope.models import build_model, final_logits, nanda_config, pizza_config
from grokscope.tasks import Task
from grokscope.training import TrainConfig, train, train_members


def _assert_same_logits(actual, expected):
    """float32 forwards that sum in another order agree to a few ulps of the logits' own scale."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def _randomised(model, seed):
    """The model with every parameter, frozen biases included, drawn at random (so tables use them all)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in backend.weights(model).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.mark.parametrize("layout, n_layers, act_fn, alpha, d_model", [
    ("nanda", 1, "relu", 1.0, 32), ("pizza", 1, "relu", 0.3, 32), ("pizza", 1, "gelu", 0.0, 32),
    ("nanda", 2, "gelu_new", 1.0, 32), ("pizza", 2, "silu", 0.7, 32),
    pytest.param("nanda", 1, "gelu_fast", 0.5, 32, marks=pytest.mark.skipif(
        backend.LINE == 4, reason="TransformerLens 4 has no gelu_fast (refused: tests/test_backend.py)")),
    ("nanda", 1, "relu", 0.6, 8), ("pizza", 1, "gelu", 1.0, 8)])
def test_stacked_logits_equal_each_hooked_transformer(layout, n_layers, act_fn, alpha, d_model):
    task = Task(p=23, eq_token=layout == "nanda")
    make = nanda_config if layout == "nanda" else pizza_config
    models = [_randomised(build_model(make(task, n_layers=n_layers, d_model=d_model, act_fn=act_fn), alpha), seed)
              for seed in (0, 1, 2)]
    arch = Architecture.from_config(models[0].cfg)
    # d_model 32: the one-layer path merges the maps around the activation; d_model 8 (a read-out wider
    # than the model) keeps the four products
    assert fused_readout(arch) == (d_model == 32)
    params = stack_parameters([backend.weights(m) for m in models])
    tokens = task.tokens()
    rows = MemberRows.from_indices(tokens, task.labels(), [torch.arange(len(tokens))] * 3)
    # [a, b, =] rows all end in '=', so its read-out tables are broadcast rather than gathered
    assert rows.last_token == (task.p if layout == "nanda" else None)
    logits = stacked_logits(params, arch, rows.tokens, torch.full((3,), alpha), rows.last_token)
    gathered = stacked_logits(params, arch, rows.tokens, torch.full((3,), alpha))
    for i, model in enumerate(models):
        with torch.no_grad():
            _assert_same_logits(logits[i], model(tokens)[:, -1])
            _assert_same_logits(logits[i], final_logits(model, tokens))
            _assert_same_logits(gathered[i], logits[i])


@pytest.mark.parametrize("layout, act_fn", [("nanda", "relu"), ("pizza", "relu"), ("nanda", "gelu")])
def test_gradients_are_each_hooked_transformers_own(layout, act_fn):
    """A pass's gradients are those of each member's float64 mean cross-entropy through its own model."""
    task = Task(p=23, eq_token=layout == "nanda")
    make = nanda_config if layout == "nanda" else pizza_config
    alpha = [1.0, 0.4]
    models = [_randomised(build_model(make(task, d_model=32, act_fn=act_fn), a), seed) for seed, a in enumerate(alpha)]
    arch = Architecture.from_config(models[0].cfg)
    params = stack_parameters([backend.weights(m) for m in models])
    trainable = [name for name in params if not name.endswith(("b_U", "b_K"))]  # b_K: see the micro-batch test
    splits = [task.split(0.5, 0), task.split(0.3, 1)]
    rows = MemberRows.from_indices(task.tokens(), task.labels(), splits)
    values = train_pass(params, trainable, arch, rows, torch.tensor(alpha), micro_batch=2)
    for i, (model, split) in enumerate(zip(models, splits)):
        leaves = backend.parameters(model)  # the line's own layout: gradients come back in the weight format
        loss = member_nll(final_logits(model, task.tokens()[split])[None], task.labels()[split][None]).mean()
        expected = [backend.to_hooked(name, grad, model.cfg)
                    for name, grad in zip(trainable, torch.autograd.grad(loss, [leaves[name] for name in trainable]))]
        assert values.losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
        for name, grad in zip(trainable, expected):
            torch.testing.assert_close(values.grads[name][i], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


def test_the_loss_gradient_reaches_the_logits_without_subnormal_numbers():
    """A memorised row's wrong-class gradients fall below float32's normal range (slow in every CPU
    product that reads them): they come back as zeros, and every other entry as the plain cast gives."""
    tiny = torch.finfo(torch.float32).tiny
    margins = torch.tensor([0.0, 20.0, 80.0, 87.0, 95.0, 100.0])  # exp(-87) ~ 1.6e-38, exp(-100) ~ 4e-44
    logits = torch.zeros(1, 6, 5)
    logits[0, :, 0] = margins
    labels = torch.zeros(1, 6, dtype=torch.long)

    def logits_grad(loss_of):
        leaf = logits.clone().requires_grad_(True)
        loss_of(leaf).sum().backward()
        return leaf.grad

    ours = logits_grad(lambda x: member_nll(x, labels))
    plain = logits_grad(lambda x: -x.double().log_softmax(-1).gather(-1, labels[..., None])[..., 0])
    subnormal = (plain != 0) & (plain.abs() < tiny)
    assert subnormal.sum() == 8  # the rows with margins 95 and 100: four wrong classes each
    assert not ((ours != 0) & (ours.abs() < tiny)).any()
    assert torch.equal(ours[~subnormal], plain[~subnormal]) and (ours[subnormal] == 0).all()
    with torch.no_grad():
        assert torch.equal(member_nll(logits, labels), -logits.double().log_softmax(-1)[..., 0])


def test_each_member_reads_its_own_rows_and_attention_rate():
    task = Task(p=23, eq_token=False)
    models = [_randomised(build_model(pizza_config(task, d_model=32), alpha), seed)
              for seed, alpha in ((0, 0.0), (1, 1.0))]
    arch = Architecture.from_config(models[0].cfg)
    params = stack_parameters([backend.weights(m) for m in models])
    rows = [torch.arange(0, 100), torch.arange(300, 529)]
    batch = MemberRows.from_indices(task.tokens(), task.labels(), rows)
    assert batch.tokens.shape == (2, 229, 2) and batch.counts.tolist() == [100, 229]
    logits = stacked_logits(params, arch, batch.tokens, torch.tensor([0.0, 1.0]))
    for i, model in enumerate(models):
        expected = final_logits(model, task.tokens()[rows[i]])
        _assert_same_logits(logits[i, :len(rows[i])], expected)
    # padding rows weigh nothing: the member mean is the mean over its own rows only
    nll = member_nll(logits, batch.labels)
    for i in range(2):
        own = member_nll(logits[i:i + 1, :len(rows[i])], batch.labels[i:i + 1, :len(rows[i])]).mean()
        torch.testing.assert_close(batch.mean(nll)[i], own, rtol=1e-12, atol=0)


def test_micro_batches_change_nothing_but_rounding():
    """One pass per member and one pass for all give the same losses and gradients."""
    task = Task(p=23)
    alpha = torch.tensor([1.0, 0.5, 0.0, 0.9])
    models = [_randomised(build_model(nanda_config(task, d_model=32), alpha[seed].item()), seed) for seed in range(4)]
    arch = Architecture.from_config(models[0].cfg)
    params = stack_parameters([backend.weights(m) for m in models])
    trainable = [name for name in params if not name.endswith("b_U")]
    rows = MemberRows.from_indices(task.tokens(), task.labels(), [task.split(0.3 + 0.1 * i, i) for i in range(4)])
    whole = train_pass(params, trainable, arch, rows, alpha, micro_batch=4, accuracy=True)
    single = train_pass(params, trainable, arch, rows, alpha, micro_batch=1, accuracy=True)
    torch.testing.assert_close(whole.losses, single.losses, rtol=1e-6, atol=0)
    torch.testing.assert_close(whole.accuracy, single.accuracy, rtol=0, atol=1e-12)  # a tie could flip one row
    # b_K's gradient is zero in exact arithmetic (a key bias shifts all of a query's scores alike), so
    # it is rounding alone: compare it on the scale of the largest gradient, not its own.
    largest = max(grad.abs().max().item() for grad in whole.grads.values())
    for name in trainable:
        atol = max(1e-5 * whole.grads[name].abs().max().item(), 1e-6 * largest)
        torch.testing.assert_close(whole.grads[name], single.grads[name], rtol=1e-4, atol=atol)
    assert whole.grads["blocks.0.attn.b_K"].abs().max().item() < 1e-5 * largest
    for i, model in enumerate(models):  # and each member's loss is its own model's
        own = rows.valid[i]
        logits = final_logits(model, rows.tokens[i][own])
        assert whole.losses[i].item() == pytest.approx(member_nll(logits[None], rows.labels[i][own][None]).mean().item(),
                                                       rel=1e-5)


def test_evaluation_in_parts_gives_the_whole_pass():
    """Rows without gradients may go in parts (a CPU evaluates ~4,096 rows at a time): same values."""
    task = Task(p=23)
    alpha = torch.tensor([1.0, 0.3])
    models = [_randomised(build_model(nanda_config(task, d_model=32), alpha[s].item()), s) for s in range(2)]
    arch = Architecture.from_config(models[0].cfg)
    params = stack_parameters([backend.weights(m) for m in models])
    rows = MemberRows.from_indices(task.tokens(), task.labels(), [task.split(0.6, 0), task.split(0.4, 1)])
    assert evaluation_rows_per_pass(2, rows.tokens.shape[1], "cpu") == rows.tokens.shape[1]
    assert evaluation_rows_per_pass(1, 5109, "cpu") == 2555 and evaluation_rows_per_pass(1, 5109, "cuda") == 5109
    whole = train_pass(params, [], arch, rows, alpha, micro_batch=2, gradients=False, accuracy=True, keep_logits=True)
    parts = train_pass(params, [], arch, rows, alpha, micro_batch=1, gradients=False, accuracy=True, keep_logits=True,
                       rows_per_pass=50)  # parts of 50 rows, the last one shorter, padding rows in it
    # passes of other sizes may round the float32 logits in their last bits (another blocking), and
    # the float64 sums add in another order: a few float32 ulps of relative error at most
    torch.testing.assert_close(parts.losses, whole.losses, rtol=1e-6, atol=0)
    one_row = 1.0 / rows.counts.min().item()  # a near-tie could flip one row's argmax, nothing more
    torch.testing.assert_close(parts.accuracy, whole.accuracy, rtol=0, atol=one_row + 1e-12)
    _assert_same_logits(parts.logits, whole.logits)
    for i, model in enumerate(models):  # and against each model's own forward on its own rows
        own = rows.valid[i]
        expected = member_nll(final_logits(model, rows.tokens[i][own])[None], rows.labels[i][own][None]).mean()
        assert parts.losses[i].item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_value_mix_and_its_gradients_are_the_broadcast_expressions():
    """``_MixValues`` is (pattern[..., None] * v).sum(2), gradients included (gradcheck in float64)."""
    gen = torch.Generator().manual_seed(0)
    pattern = torch.rand(2, 5, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    torch.testing.assert_close(engine._MixValues.apply(pattern, v), (pattern[..., None] * v).sum(2))
    assert torch.autograd.gradcheck(engine._MixValues.apply, (pattern, v))


def test_narrow_rows_are_gathered_with_index_selects_gradient():
    """``_NarrowRowsSelect`` is index_select, gradient included, with repeated rows (gradcheck in float64)."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(6, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.tensor([0, 5, 5, 2, 0, 0, 3])
    torch.testing.assert_close(engine._NarrowRowsSelect.apply(table, index), table.index_select(0, index))
    assert torch.autograd.gradcheck(engine._NarrowRowsSelect.apply, (table, index))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stacked"])
def test_stacked_adamw_is_torch_adamw_per_member(fused):
    """Three members with their own lr, decay and betas follow torch.optim.AdamW on the same problem, with
    the CPU's fused kernel per member and with the elementwise update over the stack (the GPU's)."""
    settings = MemberSettings.from_values(alpha=[1.0] * 3, lr=[1e-3, 3e-2, 1e-2], weight_decay=[0.0, 1.0, 2.0],
                                          beta1=[0.9, 0.8, 0.95], beta2=[0.98, 0.999, 0.9],
                                          grokfast_alpha=[0.98] * 3, grokfast_lamb=[0.0] * 3)
    start = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    target = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    stacked = {"w": start.clone().requires_grad_(True)}
    adam = StackedAdamW(settings, fused=fused)
    references = [start[i].clone().requires_grad_(True) for i in range(3)]
    optimisers = [torch.optim.AdamW([references[i]], lr=settings.lr[i].item(), weight_decay=settings.weight_decay[i].item(),
                                    betas=(settings.beta1[i].item(), settings.beta2[i].item())) for i in range(3)]
    for _ in range(50):
        loss = ((stacked["w"] - target) ** 4).sum()
        (grad,) = torch.autograd.grad(loss, [stacked["w"]])
        adam.step(stacked, {"w": grad})
        for i in range(3):
            optimisers[i].zero_grad()
            ((references[i] - target[i]) ** 4).sum().backward()
            optimisers[i].step()
    for i in range(3):
        # the same update in the same order; only the rounding of a few products may differ
        torch.testing.assert_close(stacked["w"][i].detach(), references[i].detach(), rtol=1e-5, atol=1e-6)


def test_a_members_adamw_update_does_not_depend_on_its_stack_mates():
    """The fused update groups members by their settings; a member's numbers stay the ones it gets alone."""
    def settings(lrs):
        n = len(lrs)
        return MemberSettings.from_values(alpha=[1.0] * n, lr=lrs, weight_decay=[1.0] * n, beta1=[0.9] * n,
                                          beta2=[0.98] * n, grokfast_alpha=[0.98] * n, grokfast_lamb=[0.0] * n)
    # Every member starts from the same weights and sees the same gradients: only lr tells them apart.
    start = torch.randn(1, 7, 33, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1)
    grads = [torch.randn(1, 7, 33, generator=torch.Generator().manual_seed(s)).expand(3, -1, -1).contiguous()
             for s in range(1, 6)]
    stack = StackedAdamW(settings([1e-3, 1e-3, 3e-2]))
    assert sorted(stack.groups.values()) == [[0, 1], [2]]
    alone = StackedAdamW(settings([1e-3]))
    stacked, single = {"w": start.clone()}, {"w": start[1:2].clone()}
    for grad in grads:
        stack.step(stacked, {"w": grad})
        alone.step(single, {"w": grad[1:2].clone()})
    assert torch.equal(stacked["w"][1], single["w"][0]) and torch.equal(stacked["w"][0], single["w"][0])
    assert torch.equal(stack.exp_avg_sq["w"][1], alone.exp_avg_sq["w"][0])
    moved = (stacked["w"] - start).abs().mean(dim=(1, 2))
    assert moved[2] > 10 * moved[1]  # the third member took its own, 30x larger steps


def test_stacked_grokfast_follows_its_recurrence_per_member():
    settings = MemberSettings.from_values(alpha=[1.0] * 3, lr=[1e-3] * 3, weight_decay=[0.0] * 3, beta1=[0.9] * 3,
                                          beta2=[0.98] * 3, grokfast_alpha=[0.5, 0.9, 0.5],
                                          grokfast_lamb=[2.0, 1.0, 0.0])
    grokfast = StackedGrokfast(settings)
    gradients = [torch.tensor([[1.0, -2.0]] * 3), torch.tensor([[3.0, 0.0]] * 3), torch.tensor([[0.0, 4.0]] * 3)]
    mu = None
    for g in gradients:
        grads = {"w": g.clone()}
        grokfast.apply(grads)
        a = settings.grokfast_alpha.float()[:, None]
        mu = g.clone() if mu is None else a * mu + (1 - a) * g
        # binary fractions throughout: exact in float32
        torch.testing.assert_close(grads["w"], g + settings.grokfast_lamb.float()[:, None] * mu, rtol=0, atol=0)
    torch.testing.assert_close(grads["w"][2], gradients[-1][2], rtol=0, atol=0)  # lamb 0: unchanged


def test_memory_rule_refuses_what_cannot_fit_and_chunks_the_rest():
    arch = Architecture.from_config(nanda_config(Task(p=113)))
    need = state_bytes_per_member(arch, grokfast=False) + activation_bytes_per_member(arch, 8939)
    assert state_bytes_per_member(arch, grokfast=False) == arch.n_parameters() * 16  # weights, grads, 2 moments
    assert 50 << 20 < need < 1 << 30
    assert members_per_chunk(100, need, 10 * need) == 10
    with pytest.raises(GrokscopeError, match=r"one member needing about \d+ MiB.*at most the 0 MiB"):
        members_per_chunk(1, need, 1000)


# ----- members in a stack against the same runs alone -----------------------------------------------

def _tiny(**overrides):
    base = dict(p=23, d_model=32, frac=0.5, epochs=200, checkpoint_every=50, log_every=10, lr=3e-3)
    return TrainConfig.preset("fast", **{**base, **overrides})


def _final_weights(folder, step):
    tensors, _ = ck.load_tensors(folder / ck.CHECKPOINT_DIR / ck.checkpoint_filename(step))
    return tensors


def _assert_close_weights(a, b, rtol):
    for name in a:
        scale = a[name].abs().max().item() + 1e-12
        error = (a[name] - b[name]).abs().max().item()
        assert error <= rtol * scale, (name, error, scale)


# A member's products are the same calls alone and in a stack (the test below checks its gradients
# bitwise on this machine and thread count). Whole runs are compared within a bound that leaves room
# for BLAS builds that block a batched forward product differently by stack size.
STACK_RTOL = 1e-3


@pytest.mark.parametrize("eq_token", [True, False])
def test_a_members_gradients_do_not_depend_on_its_stack_mates(eq_token):
    """At the `fast` shape (1,740 rows; two members share a pass) a member's gradients alone and beside
    another are the same floats on one machine and thread count: sums over the rows go member by member,
    which otherwise round one way alone and another in a stack (training amplified that to a relative
    weight difference of order 1 within 300 epochs on two threads)."""
    task = Task(p=59, eq_token=eq_token)
    make = nanda_config if eq_token else pizza_config
    models = [_randomised(build_model(make(task, d_model=128)), seed) for seed in (0, 1)]
    arch = Architecture.from_config(models[0].cfg)
    split = task.split(0.5, 0)

    def grads(members):
        params = stack_parameters([backend.weights(m) for m in members])
        trainable = [name for name in params if not name.endswith("b_U")]
        rows = MemberRows.from_indices(task.tokens(), task.labels(), [split] * len(members))
        return train_pass(params, trainable, arch, rows, torch.ones(len(members)), micro_batch=2).grads

    alone, stacked = grads(models[1:]), grads(models)
    for name in alone:
        assert torch.equal(alone[name][0], stacked[name][1]), name


def test_a_member_in_a_stack_follows_its_run_alone(tmp_path):
    member = _tiny(seed=3, split_seed=1, alpha=0.8, weight_decay=0.5)
    others = [_tiny(seed=5, frac=0.3, lr=1e-3), _tiny(seed=7, grokfast=True, eq_token=True)]
    alone = train(member, tmp_path / "alone", progress=False)
    stacked = train_members([others[0], member, others[1]], [tmp_path / "a", tmp_path / "m", tmp_path / "b"],
                            progress=False)
    assert stacked[1].steps == alone.steps
    _assert_close_weights(_final_weights(tmp_path / "alone", 200), _final_weights(tmp_path / "m", 200), STACK_RTOL)
    for column in ("train_loss", "train_acc", "test_acc"):
        assert stacked[1].log[column] == pytest.approx(alone.log[column], rel=1e-2, abs=2e-3), column
    # other stack-mates: the member's result does not depend on them beyond rounding
    again = train_members([member, _tiny(seed=11, weight_decay=2.0)], [tmp_path / "m2", tmp_path / "c"], progress=False)
    _assert_close_weights(_final_weights(tmp_path / "m", 200), _final_weights(tmp_path / "m2", 200), STACK_RTOL)
    assert again[0].config["train_config"] == member.to_dict()


def test_members_are_ordinary_native_runs(tmp_path):
    configs = [_tiny(seed=s, epochs=20, checkpoint_every=10) for s in (0, 1)]
    runs = train_members(configs, [tmp_path / "0", tmp_path / "1"], progress=False)
    for run, config in zip(runs, configs):
        assert run.config["status"]["finished"] and run.config["status"]["members_in_stack"] == 2
        assert run.task == config.task
        model = run.model(-1)
        with torch.no_grad():
            logits = model(config.task.tokens())[:, -1]
        train_rows = config.train_indices()
        loss = member_nll(logits[None, train_rows], config.task.labels()[None, train_rows]).mean().item()
        assert loss == pytest.approx(run.log["train_loss"][-1], rel=1e-5)
        assert not (Path(run.source) / ck.RESUME_FILE).exists()


def test_a_kill_between_members_resumes_every_member(tmp_path, monkeypatch):
    """Killed after member 0's step-40 files but before member 1's: member 1 catches up, both finish."""
    configs = [_tiny(seed=s, epochs=80, checkpoint_every=20) for s in (0, 1)]
    outs = [tmp_path / "0", tmp_path / "1"]
    reference = train_members(configs, [tmp_path / "r0", tmp_path / "r1"], progress=False)
    real_write = ck.atomic_write

    class Killed(Exception):
        pass

    def write_then_die(path, data):
        if str(path).endswith(f"1/{ck.CHECKPOINT_DIR}/{ck.checkpoint_filename(40)}"):
            raise Killed
        return real_write(path, data)

    monkeypatch.setattr(ck, "atomic_write", write_then_die)
    with pytest.raises(Killed):
        train_members(configs, outs, progress=False)
    monkeypatch.setattr(ck, "atomic_write", real_write)
    steps = [ck.load_tensors(out / ck.RESUME_FILE)[1]["step"] for out in outs]
    assert steps == ["40", "32"]
    resumed = train_members(configs, outs, progress=False)
    for run, ref, out, ref_out in zip(resumed, reference, outs, [tmp_path / "r0", tmp_path / "r1"]):
        assert run.steps == ref.steps and run.log["step"] == ref.log["step"]
        _assert_close_weights(_final_weights(ref_out, 80), _final_weights(out, 80), STACK_RTOL)


def test_bad_batches_are_refused_with_one_line(tmp_path):
    with pytest.raises(GrokscopeError, match="member 1 with architecture"):
        train_members([_tiny(), _tiny(d_model=16)], [tmp_path / "a", tmp_path / "b"], progress=False)
    with pytest.raises(GrokscopeError, match="the same folder for two members"):
        train_members([_tiny(), _tiny(seed=1)], [tmp_path / "a", tmp_path / "a"], progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(GrokscopeError, match="no CUDA GPU is available"):
            train(_tiny(), tmp_path / "c", device="cuda", progress=False)


def test_max_members_chunks_give_the_same_runs(tmp_path):
    configs = [_tiny(seed=s, epochs=30, checkpoint_every=10) for s in range(3)]
    whole = train_members(configs, [tmp_path / f"w{s}" for s in range(3)], progress=False)
    chunked = train_members(configs, [tmp_path / f"c{s}" for s in range(3)], progress=False, max_members=2)
    for s in range(3):
        assert chunked[s].config["status"]["members_in_stack"] == (2 if s < 2 else 1)
        _assert_close_weights(_final_weights(tmp_path / f"w{s}", 30), _final_weights(tmp_path / f"c{s}", 30),
                              STACK_RTOL)
    assert whole[0].log["step"] == chunked[0].log["step"]


@pytest.mark.slow
def test_a_stacked_fast_member_groks_when_its_run_alone_does(fast_run_dir, tmp_path):
    """The `fast` recipe inside a stack of three memorises and groks at the epochs it does alone."""
    from grokscope.training import first_step_at

    fast = TrainConfig.preset("fast")
    runs = train_members([fast.replace(seed=1), fast, fast.replace(alpha=0.5, seed=2)],
                         [tmp_path / s for s in ("a", "fast", "b")], progress=False)
    from grokscope.formats import native

    alone = native.read(fast_run_dir)
    for column in ("train_acc", "test_acc"):
        for threshold in (0.5, 0.99):
            ours, theirs = first_step_at(runs[1].log, column, threshold), first_step_at(alone.log, column, threshold)
            assert ours is not None and theirs is not None
            assert abs(ours - theirs) <= max(20, 0.05 * theirs), (column, threshold, ours, theirs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_members_follow_the_cpu_run(tmp_path):
    config = _tiny(epochs=100)
    cpu = train(config, tmp_path / "cpu", progress=False)
    gpu = train(config, tmp_path / "gpu", progress=False, device="cuda")
    assert gpu.steps == cpu.steps
    _assert_close_weights(_final_weights(tmp_path / "cpu", 100), _final_weights(tmp_path / "gpu", 100), 1e-2)
    assert math.isclose(gpu.log["train_acc"][-1], cpu.log["train_acc"][-1], abs_tol=0.02)


class _Terminal:
    """A stderr that says it is a terminal and keeps what was written."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True

    @property
    def text(self):
        return "".join(self.parts)


def test_one_progress_bar_for_a_stack_counts_memorised_and_grokked(tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    configs = [_tiny(seed=s, epochs=30, checkpoint_every=10) for s in (0, 1)]
    train_members(configs, [tmp_path / "a", tmp_path / "b"], progress=True)
    assert "train p=23 add x2" in terminal.text and "30/30" in terminal.text
    assert "memorised=" in terminal.text and "/2" in terminal.text and "grokked=" in terminal.text
    single = _Terminal()
    monkeypatch.setattr("sys.stderr", single)
    train(configs[0], tmp_path / "c", progress=True)
    assert "train p=23 add" in single.text and "test_acc=" in single.text and "epoch" in single.text
    quiet = _Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    train(configs[0], tmp_path / "d", progress=False)
    assert quiet.text == ""
