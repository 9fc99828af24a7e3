"""The fused head and loss (`tinystories/loss.py`) against the plain head plus `F.cross_entropy`, one process.

    python benchmarks/loss.py              # the 19.5M model's head (256 -> 32,000), the demo's (192 -> 4,096): ~20 s
    python benchmarks/loss.py --repeats 1   # a quick check that it runs
    python benchmarks/loss.py --device cuda --tokens 65536   # a GPU at the fast config's batch: compiled chunks too

Forward and backward of the output head and the summed loss over `--tokens` positions (default the demo's batch:
8 x 512), bf16 autocast as in training, interleaved so both see the same machine; the median of `--repeats` calls
each. Head shapes come from configs/tinystories-20m-fast.yaml (LLaMA-2's 32,000 tokens) and configs/demo.yaml (its
trained BPE's size). Prints the gradients' largest relative difference as a check, and `ratio=` (plain time / fused
time) per shape. On CUDA with Triton it also times the eager chunks against the compiled ones that `fit` runs there
(`tinystories/loss.py`), as `eager/compiled=`.
"""

import argparse

import torch
import torch.nn.functional as F
from common import architecture, interleaved, load_config

from tinystories import loss
from tinystories.loss import linear_cross_entropy


def shapes() -> dict[str, tuple[int, int]]:
    """name: (hidden size, vocabulary) of each config's output head."""
    fast, demo = load_config("configs/tinystories-20m-fast.yaml"), load_config("configs/demo.yaml")
    reference = architecture(fast)  # vocab_size: the LLaMA-2 tokenizer's 32,000, Architecture's default
    d, vocab = architecture(demo).hidden_size, demo["data"]["tokenizer_vocab_size"]
    return {f"19.5M model (d {reference.hidden_size}, vocab {reference.vocab_size:,})": (reference.hidden_size,
                                                                                         reference.vocab_size),
            f"demo (d {d}, vocab {vocab:,})": (d, vocab)}


def plain(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=-100, reduction="sum")


def eager_chunks(hidden, weight, targets):
    compiled, loss.compiled_chunks = loss.compiled_chunks, lambda device: False
    try:
        return linear_cross_entropy(hidden, weight, targets)
    finally:
        loss.compiled_chunks = compiled


def gradients(fn, hidden, weight, targets) -> list[torch.Tensor]:
    hidden.grad = weight.grad = None
    with torch.autocast(hidden.device.type, dtype=torch.bfloat16):
        nats = fn(hidden, weight, targets)
    (nats / targets.numel()).backward()
    if hidden.is_cuda:  # the timing reads the host clock: wait for the kernels
        torch.cuda.synchronize(hidden.device)
    return [hidden.grad, weight.grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8 * 512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch threads: {torch.get_num_threads()}; {args.tokens} positions on {device}, bf16 autocast, forward + "
          "backward")
    for name, (d, vocab) in shapes().items():
        torch.manual_seed(0)
        hidden = torch.randn(args.tokens, d, device=device, requires_grad=True)
        weight = (torch.randn(vocab, d, device=device) * d ** -0.5).requires_grad_()
        targets = torch.randint(0, vocab, (args.tokens,), device=device)
        fns = {"plain": plain, "fused": linear_cross_entropy}
        if loss.compiled_chunks(device):
            fns["eager chunks"] = eager_chunks
            gradients(linear_cross_entropy, hidden, weight, targets)  # compile before the timing
        timings = interleaved({k: (lambda i, fn=fn: gradients(fn, hidden, weight, targets)) for k, fn in fns.items()},
                              args.repeats, 1)
        reference = [g.clone() for g in gradients(plain, hidden, weight, targets)]
        fused = gradients(linear_cross_entropy, hidden, weight, targets)
        diff = max(float((a - b).norm() / b.norm()) for a, b in zip(fused, reference))
        base, ours = timings["plain"].ms, timings["fused"].ms
        eager = f", eager/compiled={timings['eager chunks'].ms / ours:.2f}" if "eager chunks" in timings else ""
        print(f"{name}: plain {base:.0f} ms, fused {ours:.0f} ms, gradients differ by {diff:.1e} (relative norm); "
              f"ratio={base / ours:.2f}{eager}")


if __name__ == "__main__":
    main()
