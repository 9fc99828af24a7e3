"""Hugging Face's `sdpa` attention as `TinyStoriesLM` trains with it: every query row attends to something, small
heads run in fp32 on the CPU, and devices without a grouped-query kernel get K/V repeated.

    model.set_attn_implementation(ATTENTION)   # registered with transformers' AttentionInterface on import

Three changes to transformers' `sdpa`, each for one device:
- Left padding makes a pad position's query row fully masked (no key before it is real). transformers' `sdpa_mask`
  leaves such rows as they are (its `allow_torch_fix` has no effect), and fully masked rows are a known source of NaN
  outputs or gradients in fused GPU kernels (cuDNN attention, which torch prefers on sm90+ when a mask is given).
  `sdpa_mask_every_row_attends` lets such a row attend to its own position. Its output is never used: no real query
  attends to a pad key, and its label is ignored. Every device gets this mask.
- PyTorch's CPU flash-attention kernel runs its backward pass poorly in bf16 when heads are small: for the 19.5M
  reference model's heads of 16 dimensions it takes twice as long as fp32 (docs/performance.md). So under
  low-precision autocast, or with bf16/fp16 weights, on the CPU, heads of fewer than `FP32_BELOW` dimensions run in
  fp32 and hand back the dtype `sdpa` would have.
- With no mask (packed batches), transformers asks SDPA for `enable_gqa`, which on CUDA only the flash kernel (sm80+)
  and the math kernel serve. Before sm80 (T4, V100) that is the math kernel, with fp32 L x L scores for every head.
  So everywhere but CUDA sm80+, K/V are repeated here and SDPA sees as many key heads as query heads: a pre-sm80
  GPU then runs its memory-efficient kernel. On the CPU both ways take the same time (`python benchmarks/mask.py`),
  and it takes the same path as other devices without a CUDA grouped-query kernel.

Exported models name no attention implementation (`config.json`), so they load with transformers' default.
"""

from functools import lru_cache

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "tinystories_sdpa"
FP32_BELOW = 64  # head dimensions below this run in fp32 on the CPU; at 64 bf16 and fp32 are even
LOW_PRECISION = (torch.bfloat16, torch.float16)


def sdpa_mask_every_row_attends(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0,
                                kv_offset: int = 0, **kwargs):
    """transformers' `sdpa_mask`, where a fully masked query row (a left pad) attends to its own position.

    Only the diagonal opens: on the CPU, attention kernels skip blocks of keys masked for every query of a block, so
    opening whole rows would cost pad rows as much as real ones (3x the attention time of a recipe batch).
    """
    mask = sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, **kwargs)
    if mask is None:  # no padding: SDPA runs with `is_causal`
        return None
    device = mask.device
    diagonal = (torch.arange(q_length, device=device) + q_offset)[:, None] == (
        torch.arange(kv_length, device=device) + kv_offset)[None, :]
    # A query outside the keys' positions (none in this project's use) attends to every key instead.
    opened = diagonal | ~diagonal.any(-1, keepdim=True)
    return mask | (~mask.any(-1, keepdim=True) & opened)


@lru_cache(maxsize=None)
def needs_repeated_kv(device: torch.device) -> bool:
    """Whether K/V are repeated for a maskless SDPA call: everywhere but CUDA from sm80 on, whose flash kernel takes
    grouped-query attention as it is; before sm80 `enable_gqa` falls to the math kernel."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0)


class _OneKeyHeadPerQueryHead:
    """The attention module as `sdpa_attention_forward` sees it once K/V are repeated: no grouping left."""

    num_key_value_groups = 1

    def __init__(self, module):
        self.is_causal = getattr(module, "is_causal", True)


def tinystories_sdpa(module, query, key, value, attention_mask, **kwargs):
    groups = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None and groups > 1 and needs_repeated_kv(query.device):
        key, value, module = repeat_kv(key, groups), repeat_kv(value, groups), _OneKeyHeadPerQueryHead(module)
    device = query.device.type
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else query.dtype
    if device != "cpu" or query.shape[-1] >= FP32_BELOW or dtype not in LOW_PRECISION:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast(device, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(dtype), weights


AttentionInterface.register(ATTENTION, tinystories_sdpa)
# Without a mask function of its own, transformers would pass no mask at all (so no padding) to this attention.
AttentionMaskInterface.register(ATTENTION, sdpa_mask_every_row_attends)
