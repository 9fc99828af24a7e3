"""Hugging Face's `sdpa` attention, with small heads in fp32 on the CPU: what `TinyStoriesLM` trains with.

    model.set_attn_implementation(ATTENTION)   # registered with transformers' AttentionInterface on import

PyTorch's CPU flash-attention kernel runs its backward pass poorly in bf16 when heads are small: for the 19.5M
reference model's heads of 16 dimensions it takes twice as long as fp32 (docs/performance.md). So under
low-precision autocast, or with bf16/fp16 weights, on the CPU, heads of fewer than `FP32_BELOW` dimensions run in
fp32 and hand back the dtype `sdpa` would have. Everything else, and every GPU, takes `sdpa` unchanged. Exported
models name no attention implementation (`config.json`), so they load with transformers' default.
"""

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "tinystories_sdpa"
FP32_BELOW = 64  # head dimensions below this run in fp32 on the CPU; at 64 bf16 and fp32 are even
LOW_PRECISION = (torch.bfloat16, torch.float16)


def sdpa_small_heads_fp32(module, query, key, value, attention_mask, **kwargs):
    device = query.device.type
    autocast = torch.is_autocast_enabled(device)
    dtype = torch.get_autocast_dtype(device) if autocast else query.dtype
    if device != "cpu" or query.shape[-1] >= FP32_BELOW or dtype not in LOW_PRECISION:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast(device, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(dtype), weights


AttentionInterface.register(ATTENTION, sdpa_small_heads_fp32)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # without it, transformers would pass no mask at all (padding)
