"""What reaches `scaled_dot_product_attention`: no fully masked query row, no mask for pad-free batches, and K/V
repeated where a GPU has no grouped-query kernel."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_model
from tinystories import attention
from tinystories.data import collate


class SdpaCalls:
    """Records the mask, `is_causal`, `enable_gqa` and head counts of each SDPA call, then runs it."""

    def __init__(self, monkeypatch):
        self.calls, real = [], F.scaled_dot_product_attention

        def record(query, key, value, attn_mask=None, is_causal=False, **kwargs):
            self.calls.append({"mask": attn_mask, "is_causal": is_causal, "enable_gqa": kwargs.get("enable_gqa", False),
                               "heads": (query.shape[1], key.shape[1])})
            return real(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", record)


def left_padded(*lengths: int) -> dict:
    torch.manual_seed(0)
    return collate([{"input_ids": torch.randint(3, 300, (n,)).tolist(), "num_bytes": 0} for n in lengths], 0)


def test_no_query_row_reaches_sdpa_fully_masked_in_training_and_validation(monkeypatch):
    sdpa = SdpaCalls(monkeypatch)
    model = tiny_model()
    batch = left_padded(12, 3, 7)
    assert batch["padded"]
    for training in (True, False):
        model.train(training)
        nats, _ = model.nats(batch)
        assert torch.isfinite(nats)
    assert len(sdpa.calls) == 2 * model.model.config.num_hidden_layers
    for call in sdpa.calls:
        mask = call["mask"]
        assert mask is not None and mask.dtype == torch.bool
        assert mask.any(-1).all(), "a query row reached SDPA with every key masked"


def test_the_mask_changes_only_pad_rows():
    batch = left_padded(6, 2)
    kwargs = dict(batch_size=2, q_length=6, kv_length=6, attention_mask=batch["attention_mask"].bool())
    plain, ours = attention.sdpa_mask(**kwargs), attention.sdpa_mask_every_row_attends(**kwargs)
    empty = ~plain.any(-1)  # row 1's first 4 queries are pads: nothing before them is real
    assert empty[1, 0, :4].all() and not empty[0].any() and not empty[1, 0, 4:].any()
    assert torch.equal(ours[~empty], plain[~empty])
    opened = ours & ~plain
    assert torch.equal(opened[1, 0, :4], torch.eye(4, 6, dtype=torch.bool))  # each pad attends to itself alone
    assert not opened[0].any() and not opened[1, 0, 4:].any()
    assert attention.sdpa_mask_every_row_attends(batch_size=1, q_length=4, kv_length=4) is None  # no padding


def test_batched_generation_prefill_has_no_fully_masked_row(monkeypatch):
    sdpa = SdpaCalls(monkeypatch)
    model = tiny_model().eval()
    batch = left_padded(9, 2)
    with torch.no_grad():
        out = model.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 12)
    masks = [c["mask"] for c in sdpa.calls if c["mask"] is not None]
    assert masks and all(bool(m.any(-1).all()) for m in masks)


def test_a_batch_without_pads_reaches_sdpa_with_no_mask_and_the_same_loss(monkeypatch):
    model = tiny_model().eval()
    batch = left_padded(8, 8, 8)
    assert not batch["padded"]
    sdpa = SdpaCalls(monkeypatch)
    with torch.no_grad():
        fast, count = model.nats(batch)
        masked, same_count = model.nats({**batch, "padded": True})  # the mask of all ones, as without the flag
    layers = model.model.config.num_hidden_layers
    assert all(c["mask"] is None and c["is_causal"] for c in sdpa.calls[:layers])
    torch.testing.assert_close(fast, masked)
    assert count == same_count


def test_kv_are_repeated_everywhere_but_cuda_sm80_and_later(monkeypatch):
    assert attention.needs_repeated_kv(torch.device("cpu"))
    for capability, repeated in (((7, 5), True), ((8, 0), False), ((9, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        attention.needs_repeated_kv.cache_clear()
        assert attention.needs_repeated_kv(torch.device("cuda", 0)) == repeated
    attention.needs_repeated_kv.cache_clear()


@pytest.mark.parametrize("padded", [False, True])
def test_devices_without_grouped_query_kernels_get_repeated_kv(monkeypatch, padded):
    model = tiny_model().eval()  # 4 query heads, 2 key-value heads
    batch = left_padded(8, 5 if padded else 8)
    monkeypatch.setattr(attention, "needs_repeated_kv", lambda device: False)  # as on an H100: enable_gqa
    with torch.no_grad():
        grouped, _ = model.nats(batch)
    monkeypatch.setattr(attention, "needs_repeated_kv", lambda device: True)  # as on the CPU or a T4 (sm75)
    sdpa = SdpaCalls(monkeypatch)
    with torch.no_grad():
        repeated, _ = model.nats(batch)
    torch.testing.assert_close(repeated, grouped)
    heads = {c["heads"] for c in sdpa.calls}
    if padded:  # a mask already keeps transformers from asking for enable_gqa: it repeats K/V itself
        assert not any(c["enable_gqa"] for c in sdpa.calls)
    else:
        assert heads == {(4, 4)} and not any(c["enable_gqa"] for c in sdpa.calls)


def test_validation_loss_shows_a_nan_batch(monkeypatch):
    model = tiny_model()
    results = iter([(torch.tensor(float("nan")), torch.tensor(5)), (torch.tensor(2.0), torch.tensor(5))])
    monkeypatch.setattr(model, "nats", lambda batch: next(results))
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kwargs: logged.__setitem__(name, value))
    for _ in range(2):
        model.validation_step({"num_bytes": torch.tensor([10])}, 0)
    model.on_validation_epoch_end()
    assert torch.isnan(logged["val/loss"]) and torch.isnan(logged["val/bpb"])
