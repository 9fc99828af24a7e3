"""The fused head and loss (`tinystories/loss.py`) against the plain head plus `F.cross_entropy`, one process.

    python benchmarks/loss.py            # the 19.5M model's head (256 -> 32,000) and the demo's (192 -> 4,096)

Forward and backward of the output head and the summed loss over 8 x 512 positions, bf16 autocast as in training,
interleaved so both see the same machine; the median of `--repeats` calls each. Prints the gradients' largest
relative difference as a check, and `ratio=` (plain time / fused time) per shape.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinystories.loss import linear_cross_entropy  # noqa: E402

SHAPES = {"19.5M model (d 256, vocab 32,000)": (256, 32000), "demo (d 192, vocab 4,096)": (192, 4096)}


def plain(hidden, weight, targets):
    return F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=-100, reduction="sum")


def timed(fn, hidden, weight, targets) -> tuple[float, list[torch.Tensor]]:
    hidden.grad = weight.grad = None
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nats = fn(hidden, weight, targets)
    (nats / targets.numel()).backward()
    return time.perf_counter() - start, [hidden.grad, weight.grad]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8 * 512)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; {args.tokens} positions, bf16 autocast, forward + backward")
    for name, (d, vocab) in SHAPES.items():
        torch.manual_seed(0)
        hidden = torch.randn(args.tokens, d, requires_grad=True)
        weight = (torch.randn(vocab, d) * d ** -0.5).requires_grad_()
        targets = torch.randint(0, vocab, (args.tokens,))
        times = {plain: [], linear_cross_entropy: []}
        for i in range(args.repeats + 2):
            for fn in times:
                seconds, grads = timed(fn, hidden, weight, targets)
                if i >= 2:  # warm-up calls left out
                    times[fn].append(seconds)
                if fn is plain:
                    reference = [g.clone() for g in grads]
        diff = max(float((a - b).norm() / b.norm()) for a, b in zip(grads, reference))
        base, fused = statistics.median(times[plain]), statistics.median(times[linear_cross_entropy])
        print(f"{name}: plain {base * 1e3:.0f} ms, fused {fused * 1e3:.0f} ms, gradients differ by {diff:.1e} "
              f"(relative norm); ratio={base / fused:.2f}")


if __name__ == "__main__":
    main()
