"""Next-token cross-entropy straight from the last hidden states: the output head and the loss in one pass.

    nats = linear_cross_entropy(hidden, lm_head.weight, targets)   # == F.cross_entropy(hidden @ W.T, targets, sum)

The logits are the largest tensor of a step (8 x 512 x 32,000 for the 19.5M model: 262 MB in bf16, then an fp32 copy
for the softmax, then its gradient). Here they exist a chunk of rows at a time (4 to 16 MB of fp32 on a CPU): each
chunk's softmax gives the loss and, at once, the gradient of the logits (softmax minus one-hot), which two matrix
products turn into the gradients of the hidden states and of the head. Backward only scales what forward computed,
and forward plus backward run about twice as fast as the plain head plus `F.cross_entropy` on a 2-core CPU
(`python benchmarks/loss.py`; docs/performance.md).

Numerics follow autocast: the products run in the autocast dtype (bf16 or fp16) when autocast is on, else in the
weight's dtype; the softmax and the loss are fp32, as autocast computes `cross_entropy`.

On a GPU the chunk between the products is memory-bound: in eager PyTorch each chunk writes its logits, an fp32
copy of the probabilities and then their low-precision copy, and reads each back (about 26 bytes a logit; at a 32k
vocabulary and 65,536 tokens a step, tens of GB a step). Where the model's layers are compiled on CUDA
(`model.compile`, with Triton and a C compiler: `compiled=True` here), that part is one compiled function of fixed
shape, which Inductor fuses into a reduction and one pointwise kernel: the logits are written once in the compute
dtype, read twice, and the gradient written once in it (about 14 bytes a logit), with no fp32 copy. Its chunks take a
few fixed sizes (`compiled_plan`: powers of two up to 2^27 logits), so a batch smaller than the largest is padded by
less than its own size, and each size compiles once. The CPU keeps the eager chunks, sized for its caches and
measured faster.
"""

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Rows of logits per chunk: on the CPU, a chunk's fp32 softmax within a core's L2 cache (2**20 elements, 4 MB) but at
# least 128 rows, which keep the products efficient (256 rows at a 4k vocabulary, 128 at 32k); the head's gradient is
# summed over 512 rows at a time, fewer and larger products. On a GPU, larger chunks keep kernel launches few (a
# guess: no GPU has measured it), in a multiple of 256 rows, so a step's 65,536 tokens are a whole number of chunks.
CHUNK_ELEMENTS = {"cpu": 2**20, "default": 2**27}
MIN_ROWS = {"cpu": 128, "default": 1}
GROUP_ROWS = {"cpu": 512, "default": 1}
ROW_MULTIPLE = {"cpu": 1, "default": 256}


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


def chunk_rows(device: torch.device, vocab_size: int) -> tuple[int, int]:
    """Rows of logits per chunk, and per head-gradient product (a whole number of chunks)."""
    kind = device.type if device.type in CHUNK_ELEMENTS else "default"
    rows = max(MIN_ROWS[kind], CHUNK_ELEMENTS[kind] // vocab_size, 1)
    rows = max(rows // ROW_MULTIPLE[kind] * ROW_MULTIPLE[kind], min(rows, ROW_MULTIPLE[kind]))
    return rows, rows * max(1, GROUP_ROWS[kind] // rows)


def compiled_chunks(device: torch.device) -> bool:
    """Whether compiled chunks can run on `device`: on CUDA with Triton (which `torch.compile` needs there); never on
    the CPU. `linear_cross_entropy` uses them only when asked to (`compiled=True`: the model's layers are compiled)."""
    return device.type == "cuda" and _has_triton()


def compiled_plan(n: int, device: torch.device, vocab_size: int) -> list[int]:
    """Row counts of the compiled chunks that cover `n` rows: whole chunks of the largest size, then the smallest size
    that holds the rest. Sizes are powers of two from the largest (`CHUNK_ELEMENTS` logits) down to `ROW_MULTIPLE`
    rows: 4,096 to 256 rows at a 32k vocabulary, so 1,200 rows run as one chunk of 2,048."""
    kind = device.type if device.type in CHUNK_ELEMENTS else "default"
    largest = 1 << (max(CHUNK_ELEMENTS[kind] // vocab_size, 1).bit_length() - 1)
    smallest = min(largest, ROW_MULTIPLE[kind])
    plan, rest = [largest] * (n // largest), n % largest
    if rest:
        size = largest
        while size // 2 >= max(rest, smallest):
            size //= 2
        plan.append(size)
    return plan


@lru_cache(maxsize=None)
def _has_triton() -> bool:
    from torch.utils._triton import has_triton

    return has_triton()


def _chunk_nats(h, w, index, scale):
    """Summed nats of one chunk (`scale`: each row's weight, 0 where ignored), and the fp32 logits and log-sum-exp."""
    logits = (h @ w.T).float()
    lse = torch.logsumexp(logits, -1)
    return ((lse - logits.gather(1, index[:, None]).squeeze(1)) * scale).sum(), logits, lse


def _chunk_loss(h, w, index, scale):
    return _chunk_nats(h, w, index, scale)[0]


def _chunk_loss_and_grad(h, w, index, scale):
    """A chunk's summed nats and the gradient of its logits, (softmax - one-hot) x scale, in `h`'s dtype: the one-hot
    is subtracted in fp32, before rounding."""
    nats, logits, lse = _chunk_nats(h, w, index, scale)
    target = torch.arange(logits.shape[1], device=logits.device)[None, :] == index[:, None]
    grad = (torch.exp(logits - lse[:, None]) - target.float()) * scale[:, None]
    return nats, grad.to(h.dtype)


@lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=False, fullgraph=True)


def _padded(total: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """`tensors` padded with zeros along their first dimension to `total` rows."""
    return [F.pad(t, (0, 0) * (t.dim() - 1) + (0, total - t.shape[0])) if total > t.shape[0] else t
            for t in tensors]


def _chunks(plan: list[int]):
    start = 0
    for rows in plan:
        yield start, start + rows
        start += rows


def _compiled_loss_only(h, w, targets, weights) -> torch.Tensor:
    plan = compiled_plan(h.shape[0], h.device, w.shape[0])
    valid = targets != IGNORE_INDEX
    scale = valid.float() if weights is None else weights.where(valid, 0)
    h, index, scale = _padded(sum(plan), h, targets.where(valid, 0), scale)
    chunk = _compiled(_chunk_loss)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start, end in _chunks(plan):
        total += chunk(h[start:end], w, index[start:end], scale[start:end])
    return total


def _compiled_forward(h, w, targets, weights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed nats and the gradients of `h` and `w` (fp32), chunk by compiled chunk."""
    n, plan = h.shape[0], compiled_plan(h.shape[0], h.device, w.shape[0])
    valid = targets != IGNORE_INDEX
    scale = valid.float() if weights is None else weights.where(valid, 0)
    h_pad, index, scale = _padded(sum(plan), h, targets.where(valid, 0), scale)
    chunk = _compiled(_chunk_loss_and_grad)
    grad_h = torch.empty_like(h_pad)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start, end in _chunks(plan):
        h_chunk = h_pad[start:end]
        nats, grad_logits = chunk(h_chunk, w, index[start:end], scale[start:end])
        total += nats
        torch.mm(grad_logits, w, out=grad_h[start:end])
        grad_w.add_(grad_logits.T @ h_chunk)  # ignored and padded rows have a zero gradient
    return total, grad_h[:n], grad_w


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         weights: Optional[torch.Tensor] = None, compiled: bool = False) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` against `targets` (`-100` is ignored), as an fp32 scalar; with
    `weights`, each target's nats times its weight. `compiled`: run the chunks compiled where `compiled_chunks` says
    they can (the model passes whether its layers are compiled).

    `hidden` is (..., d), `weight` (vocab, d), `targets` and `weights` the shape of `hidden` without its last
    dimension.
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    weights = weights.reshape(-1).float() if weights is not None else None
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, weights, compiled)
    return _loss_only(hidden, weight, targets, weights, compiled)


def _loss_only(hidden, weight, targets, weights, compiled) -> torch.Tensor:
    dtype = compute_dtype(hidden, weight)
    with torch.autocast(hidden.device.type, enabled=False):
        w, h = weight.to(dtype), hidden.to(dtype)
        if compiled and compiled_chunks(h.device):
            return _compiled_loss_only(h, w, targets, weights)
        rows, _ = chunk_rows(hidden.device, weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, h.shape[0], rows):
            t = targets[start:start + rows]
            valid = t != IGNORE_INDEX
            log_probs = torch.log_softmax(h[start:start + rows] @ w.T, -1, dtype=torch.float32)
            nats = -log_probs.gather(1, t.where(valid, 0)[:, None]).squeeze(1).masked_fill(~valid, 0)
            total += (nats if weights is None else nats * weights[start:start + rows]).sum()
        return total


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, compiled):
        # No host synchronisation (no branch on tensor values): ignored rows are handled by masks, not by indexing.
        dtype = compute_dtype(hidden, weight)
        with torch.autocast(hidden.device.type, enabled=False):
            w, h = weight.to(dtype), hidden.to(dtype)
            if compiled and compiled_chunks(h.device):
                total, grad_h, grad_w = _compiled_forward(h, w, targets, weights)
                ctx.save_for_backward(grad_h, grad_w)
                ctx.dtypes = hidden.dtype, weight.dtype
                return total
            rows, group = chunk_rows(hidden.device, weight.shape[0])
            n, device = h.shape[0], h.device
            valid = targets != IGNORE_INDEX
            index = targets.where(valid, 0)[:, None]
            h_valid = h * valid[:, None]  # ignored rows add nothing to the head's gradient
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=device)
            total = torch.zeros((), dtype=torch.float32, device=device)
            grad_logits = torch.empty(min(group, n), weight.shape[0], dtype=dtype, device=device)
            for group_start in range(0, n, group):
                group_end = min(group_start + group, n)
                for start in range(group_start, group_end, rows):
                    end = min(start + rows, group_end)
                    logits = h[start:end] @ w.T
                    # softmax, not log_softmax + exp: one fused pass, and the gradient is the softmax itself
                    probs = torch.softmax(logits, -1, dtype=torch.float32)
                    # log-sum-exp from the largest logit, whose probability (at least 1/vocab) never underflows:
                    # exact even where the target's own probability is below fp32's range
                    lse = logits.amax(-1).float() - probs.amax(-1).log()
                    nats = lse - logits.gather(1, index[start:end]).squeeze(1).float()
                    nats = nats.where(valid[start:end], 0)
                    probs.scatter_add_(1, index[start:end], torch.full((end - start, 1), -1.0, device=device))
                    if weights is not None:  # a target's weight scales its nats and so its gradient
                        nats = nats * weights[start:end]
                        probs.mul_(weights[start:end, None])
                    total += nats.sum()
                    chunk = grad_logits[start - group_start:end - group_start]
                    chunk.copy_(probs)  # d nats / d logits = softmax - one-hot
                    torch.mm(chunk, w, out=grad_h[start:end])
                grad_w.add_(grad_logits[:group_end - group_start].T @ h_valid[group_start:group_end])
            grad_h.mul_(valid[:, None])
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return grad_h.to(hidden_dtype) * grad_output, (grad_w * grad_output).to(weight_dtype), None, None, None
