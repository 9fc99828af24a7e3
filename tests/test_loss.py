import pytest
import torch
import torch.nn.functional as F

from tinystories import loss
from tinystories.loss import linear_cross_entropy


def reference(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight).flatten(0, -2).float(), targets.flatten(), ignore_index=-100,
                           reduction="sum")


def inputs(n=45, d=16, vocab=50, dtype=torch.float32, scale=1.0):
    torch.manual_seed(0)
    hidden = (torch.randn(3, n, d, dtype=dtype) * scale).requires_grad_()
    weight = torch.randn(vocab, d, dtype=dtype).requires_grad_()
    targets = torch.randint(0, vocab, (3, n))
    targets[:, -1] = -100
    targets[1, :7] = -100  # a left-padded row
    return hidden, weight, targets


def grads(fn, hidden, weight, targets, scale=0.25):
    hidden.grad = weight.grad = None
    nats = fn(hidden, weight, targets)
    (nats * scale).backward()  # backward scales what forward computed: check it uses the incoming gradient
    return nats.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.fixture(params=["one chunk", "chunks and groups"])
def chunking(request, monkeypatch):
    if request.param == "chunks and groups":  # 50-class rows: 4 rows a chunk, 3 chunks a group; 135 rows end ragged
        monkeypatch.setitem(loss.CHUNK_ELEMENTS, "cpu", 200)
        monkeypatch.setitem(loss.MIN_ROWS, "cpu", 1)
        monkeypatch.setitem(loss.GROUP_ROWS, "cpu", 12)
    return request.param


def test_fp32_loss_and_gradients_equal_the_plain_head_and_cross_entropy(chunking):
    hidden, weight, targets = inputs()
    got = grads(linear_cross_entropy, hidden, weight, targets)
    expected = grads(reference, hidden, weight, targets)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert got[0].dtype == torch.float32


def test_bf16_autocast_matches_autocast_head_and_cross_entropy(chunking):
    hidden, weight, targets = inputs(vocab=300, d=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = grads(linear_cross_entropy, hidden, weight, targets)
        expected = grads(reference, hidden, weight, targets)
    assert got[1].dtype == got[2].dtype == torch.float32  # gradients in the parameters' dtype, as autocast gives
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-3)
    for a, b in zip(got[1:], expected[1:]):  # bf16 products: both round the same logits, sums differ in order
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_loss_without_gradients_equals_the_loss_with_them(chunking):
    hidden, weight, targets = inputs()
    with torch.no_grad():
        no_grad = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(no_grad, linear_cross_entropy(hidden, weight, targets).detach(), rtol=1e-6, atol=1e-5)


def test_a_far_off_target_keeps_its_exact_loss():
    # Logits 30 apart per unit: some targets' probabilities underflow fp32 (loss > 69 nats, up to hundreds).
    hidden, weight, targets = inputs(scale=30.0)
    nats, grad_h, grad_w = grads(linear_cross_entropy, hidden, weight, targets)
    expected = grads(reference, hidden.double().detach().requires_grad_(), weight.double().detach().requires_grad_(),
                     targets)
    per_row = F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), targets.flatten(), reduction="none")
    assert per_row.max() > 200  # the fix-up path ran
    torch.testing.assert_close(nats, expected[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad_w.double(), expected[2], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(grad_h).all()


def test_chunk_rows_follow_the_vocabulary():
    assert loss.chunk_rows(torch.device("cpu"), 4096) == (256, 512)
    assert loss.chunk_rows(torch.device("cpu"), 32000) == (128, 512)  # at least 128 rows
    assert loss.chunk_rows(torch.device("cpu"), 300) == (3495, 3495)  # a group is at least one chunk
    assert loss.chunk_rows(torch.device("cuda"), 32000) == (4096, 4096)  # a multiple of 256 rows on a GPU
    assert loss.chunk_rows(torch.device("cuda"), 2**20) == (128, 128)


def test_weights_scale_each_targets_loss_and_its_gradient(chunking):
    hidden, weight, targets = inputs()
    weights = torch.rand(targets.shape) * 10

    def weighted_reference(hidden, weight, targets):
        nats = F.cross_entropy(F.linear(hidden, weight).flatten(0, -2).float(), targets.flatten(), ignore_index=-100,
                               reduction="none")
        return (nats * weights.flatten()).sum()

    got = grads(lambda h, w, t: linear_cross_entropy(h, w, t, weights), hidden, weight, targets)
    expected = grads(weighted_reference, hidden, weight, targets)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, weights), expected[0], rtol=1e-5,
                                   atol=1e-4)
    ones = grads(lambda h, w, t: linear_cross_entropy(h, w, t, torch.ones(targets.shape)), hidden, weight, targets)
    for a, b in zip(ones, grads(linear_cross_entropy, hidden, weight, targets)):
        torch.testing.assert_close(a, b)


def test_compiled_chunks_run_on_cuda_with_triton_only(monkeypatch):
    assert not loss.compiled_chunks(torch.device("cpu"))
    monkeypatch.setattr(loss, "_has_triton", lambda: True)
    assert loss.compiled_chunks(torch.device("cuda")) and not loss.compiled_chunks(torch.device("cpu"))
    monkeypatch.setattr(loss, "_has_triton", lambda: False)
    assert not loss.compiled_chunks(torch.device("cuda"))


@pytest.mark.parametrize("rows, vocab, plan", [
    (1200, 32000, [2048]),                   # the recipe's ~1,200 real rows: not padded up to 4,096
    (4096, 4096, [4096]),                    # the demo's 8 x 512 rows: not padded up to 32,768
    (4096, 1510, [4096]),                    # the synthetic stories' vocabulary: not 88,832
    (65536 + 300, 32000, [4096] * 16 + [512]),  # the fast config's batch and a little more
    (100, 32000, [256]),                     # at least 256 rows
])
def test_compiled_chunks_are_sized_to_the_batch(rows, vocab, plan):
    assert loss.compiled_plan(rows, torch.device("cuda"), vocab) == plan


def test_compiled_chunks_follow_the_models_compile(monkeypatch):
    """The compiled loss head runs only where the model's layers are compiled: never with `model.compile: false` (or
    when `configure_model` found compiling blocked), even where the device could compile."""
    from tests.conftest import tiny_model

    shapes = []

    def recording(fn):  # stands in for torch.compile: records the fixed shapes it is given, runs eager
        def run(h, *args):
            shapes.append(tuple(h.shape))
            return fn(h, *args)
        return run

    monkeypatch.setattr(loss, "compiled_chunks", lambda device: True)  # as on CUDA with Triton
    monkeypatch.setattr(loss, "_compiled", recording)
    ids = torch.randint(3, 300, (2, 9))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids), "padded": False}
    lm = tiny_model()
    lm.nats(batch)[0].backward()
    assert shapes == []
    lm.compiled = True  # what configure_model sets once the layers are compiled
    lm.nats(batch)[0].backward()
    assert shapes == [(32, 32)]  # 18 rows in one fixed chunk of 32 (the sizes reach below 256 rows on the CPU)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("tinystories.model").model.cpp_compiler(), reason="torch.compile on a CPU needs g++")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_chunks_equal_the_plain_head(monkeypatch, dtype):
    """The GPU path (fixed-shape compiled chunks, the last one padded), run on the CPU, against the plain head."""
    monkeypatch.setattr(loss, "compiled_chunks", lambda device: True)
    monkeypatch.setitem(loss.CHUNK_ELEMENTS, "cpu", 4000)  # 300-class rows: 8 rows a chunk, 135 rows end ragged
    monkeypatch.setitem(loss.MIN_ROWS, "cpu", 1)
    hidden, weight, targets = inputs(vocab=300, d=64)
    weights = torch.rand(targets.shape) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        got = grads(lambda h, w, t: linear_cross_entropy(h, w, t, weights, compiled=True), hidden, weight, targets)
        with torch.no_grad():
            no_grad = linear_cross_entropy(hidden, weight, targets, weights, compiled=True)
        expected = grads(lambda h, w, t: linear_cross_entropy(h, w, t, weights), hidden, weight, targets)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(no_grad, expected[0], rtol=1e-5, atol=1e-3)
    if dtype == torch.float32:
        for a, b in zip(got[1:], expected[1:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    else:  # bf16 products: the compiled chunk rounds (softmax - one-hot), the eager one softmax, then subtracts
        exact = grads(lambda h, w, t: (F.cross_entropy(F.linear(h, w).flatten(0, -2), t.flatten(), reduction="none")
                                       * weights.flatten().double()).sum(),
                      hidden.bfloat16().double().detach().requires_grad_(),
                      weight.bfloat16().double().detach().requires_grad_(), targets)
        for a, b, x in zip(got[1:], expected[1:], exact[1:]):
            assert (a.double() - x).abs().max() <= 1.5 * (b.double() - x).abs().max() + 1e-4
