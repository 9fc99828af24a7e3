import copy
import io

import pytest
import torch
from lightning.pytorch.callbacks import Timer
from transformers import get_cosine_schedule_with_warmup

from tests.conftest import tiny_model
from tinystories.errors import UserError
from tinystories.optim import BatchedMuon, MuonWithAdamW, configure


def make(model):
    optimizer = MuonWithAdamW(model.model.named_parameters(), lr=1e-2, muon_lr=5e-3, betas=(0.9, 0.95),
                              weight_decay=0.0)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, 2, 10)


def train_steps(model, optimizer, schedule, steps):
    ids = torch.randint(3, 300, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids,
             "position_ids": torch.arange(16).expand(2, 16)}
    for _ in range(steps):
        nats, count = model.nats(batch)
        optimizer.zero_grad()
        (nats / count).backward()
        optimizer.step()
        schedule.step()


@pytest.mark.parametrize("nesterov, adjust_lr_fn", [(True, "match_rms_adamw"), (False, None)])
def test_batched_muon_steps_as_torch_muon(nesterov, adjust_lr_fn):
    torch.manual_seed(0)
    shapes = [(24, 24), (40, 24), (24, 40), (24, 24), (40, 24), (8, 56)]  # square, tall, wide: batched by shape
    params = [torch.randn(shape, requires_grad=True) for shape in shapes]
    twins = [p.detach().clone().requires_grad_() for p in params]
    start = [p.detach().clone() for p in params]
    options = dict(lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours, theirs = BatchedMuon(params, **options), torch.optim.Muon(twins, **options)
    for _ in range(3):
        for p, twin in zip(params, twins):
            p.grad = torch.randn_like(p)
            twin.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, twin, p0 in zip(params, twins, start):
        assert (p - p0).abs().max() > 0.01  # three steps of lr 0.02 moved it
        torch.testing.assert_close(p, twin, rtol=0, atol=1e-6)
    for p, twin in zip(params, twins):
        torch.testing.assert_close(ours.state[p]["momentum_buffer"], theirs.state[twin]["momentum_buffer"])
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = tiny_model()
    optimizer, _ = make(model)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.model.named_parameters()}
    assert not muon & adamw and len(muon | adamw) == len(names)
    assert all(names[i].endswith(("proj.weight",)) for i in muon)
    assert {names[i] for i in adamw} >= {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}


def test_schedule_reaches_both_and_state_round_trips():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer, schedule = make(model)
    train_steps(model, optimizer, schedule, 4)
    factor = schedule.lr_lambdas[0](schedule.last_epoch)
    assert 0 < factor < 1
    assert [g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups] == pytest.approx(
        [5e-3 * factor, 1e-2 * factor])

    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    twin_optimizer, twin_schedule = make(twin)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file: no shared buffers
    twin_schedule.load_state_dict(schedule.state_dict())
    torch.manual_seed(1)
    train_steps(model, optimizer, schedule, 2)
    torch.manual_seed(1)
    train_steps(twin, twin_optimizer, twin_schedule, 2)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def configured(**hparams):
    model = tiny_model(**hparams)
    optimizer, schedule = configure(model.model.named_parameters(), model.optimization, total_steps=20)
    return model, optimizer, schedule


def learning_rates(optimizer, schedule, steps: int) -> list[list[float]]:
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return seen


def test_wsd_holds_the_peak_then_decays_linearly_to_zero():
    _, optimizer, schedule = configured(learning_rate=0.01, lr_schedule="wsd", decay_fraction=0.25, warmup_steps=4)
    lrs = [lr[0] for lr in learning_rates(optimizer, schedule, 21)]
    assert lrs[:5] == pytest.approx([0, 0.0025, 0.005, 0.0075, 0.01])  # warmup
    assert lrs[4:15] == pytest.approx([0.01] * 11)                    # stable until the last 25% (5 of 20 steps)
    assert lrs[15:] == pytest.approx([0.01, 0.008, 0.006, 0.004, 0.002, 0.0])


@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
def test_embedding_gets_its_own_learning_rate(optimizer_name):
    model, optimizer, schedule = configured(optimizer=optimizer_name, learning_rate=0.01, embedding_learning_rate=0.05)
    names = {id(p): n for n, p in model.model.named_parameters()}
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert [names[id(p)] for p in groups["embedding"]["params"]] == ["model.embed_tokens.weight"]
    assert "model.embed_tokens.weight" not in [names[id(p)] for p in groups["adamw"]["params"]]
    assert {g["name"]: g["initial_lr"] for g in optimizer.param_groups if g["name"] != "muon"} == {
        "embedding": 0.05, "adamw": 0.01}
    optimizer.step()
    schedule.step()  # the schedule scales every group by the same factor
    factors = {g["name"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert len(set(factors.values())) == 1



@pytest.mark.parametrize("muon_weight_decay, expected", [(None, 0.02), (0.1, 0.1)])
def test_muon_weight_decay_reaches_the_hidden_matrices_only(muon_weight_decay, expected):
    model, optimizer, _ = configured(optimizer="muon", weight_decay=0.02, muon_weight_decay=muon_weight_decay,
                                     embedding_learning_rate=0.05)
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {
        "muon": expected, "embedding": 0.02, "adamw": 0.02}
    matrix = optimizer.muon.param_groups[0]["params"][0]
    before = matrix.detach().clone()
    matrix.grad = torch.zeros_like(matrix)  # no gradient: the step is the decay alone
    optimizer.muon.step()
    torch.testing.assert_close(matrix, before * (1 - optimizer.muon.param_groups[0]["lr"] * expected))


def test_negative_weight_decay_is_refused():
    with pytest.raises(UserError, match="model.optimization.muon_weight_decay is -0.1"):
        tiny_model(muon_weight_decay=-0.1)


def test_zero_init_residual_starts_every_block_as_the_identity():
    model = tiny_model(zero_init_residual=True)
    for name, param in model.model.named_parameters():
        zero = name.endswith(("o_proj.weight", "down_proj.weight"))
        assert bool((param == 0).all()) == zero, name


class StoppedClock(Timer):
    """Lightning's Timer with a hand-set elapsed time."""

    def __init__(self, seconds: float):
        super().__init__(duration={"seconds": seconds})
        self.now = 0.0

    def time_elapsed(self, stage="train") -> float:
        return self.now


def clocked_run(schedule_by_max_time: bool, clock: list[float]) -> list[float]:
    """WSD over 20 steps (warmup 4, decay over the last 5) with a 100 s max_time; the clock reads `clock[step]`."""
    model = tiny_model(learning_rate=0.01, lr_schedule="wsd", decay_fraction=0.25, warmup_steps=4,
                       schedule_by_max_time=schedule_by_max_time)
    timer = StoppedClock(100)
    progress = {"now": 0.0}
    optimizer, schedule = configure(model.model.named_parameters(), model.optimization, total_steps=20,
                                    time_progress=lambda: progress["now"])
    lrs = []
    for seconds in clock:  # as Lightning orders it: batch start, optimizer step, schedule step
        timer.now = seconds
        progress["now"] = min(1.0, timer.time_elapsed() / 100)
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    torch.save(schedule.state_dict(), io.BytesIO())  # nothing of the trainer or the clock is in the schedule's state
    return lrs


def test_schedule_by_max_time_follows_the_clock_where_it_leads():
    clock = [0, 0, 0, 80, 80, 90, 100]  # seconds of a 100 s max_time at the start of steps 0..6
    # Steps 1-3: warmup on steps. Step 4 onward: 80% of the time is 16 of 20 steps, into the decay (steps 15-19).
    assert clocked_run(True, clock) == pytest.approx([0.0025, 0.005, 0.0075, 0.008, 0.008, 0.004, 0.0])
    assert clocked_run(False, clock) == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01])
    # Where steps lead, the clock changes nothing.
    assert clocked_run(True, [1] * 7) == clocked_run(False, [1] * 7)
