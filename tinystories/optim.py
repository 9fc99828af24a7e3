"""How a model is trained: the options (`model.optimization` in the YAML), the optimizer and the schedule.

    optimizer, schedule = configure(model.named_parameters(), Optimization(optimizer="muon"), total_steps=2000)
    optimizer = MuonWithAdamW(model.named_parameters(), lr=1e-2, muon_lr=6e-3, betas=(0.9, 0.95), weight_decay=0.0)

`configure` is a plain function of the parameters, the options and the run's length, so a benchmark or a test builds
exactly what `fit` trains with, without a trainer. Muon (torch.optim.Muon) orthogonalizes each matrix's momentum
update; with `adjust_lr_fn="match_rms_adamw"` its updates have AdamW's RMS, so AdamW-sized learning rates suit it.
Embeddings, the output head and norm weights stay on AdamW, as Muon's authors advise. One schedule scales every
learning rate. `BatchedMuon` runs Muon's Newton-Schulz iterations for all matrices of one shape together.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional

import torch
from torch.optim._muon import _adjust_lr
from transformers import get_cosine_schedule_with_warmup, get_wsd_schedule

from tinystories.errors import UserError
from tinystories.precision import bf16_is_fast


@dataclass
class Optimization:
    """How the model is trained.

    Args:
        optimizer: `adamw` (the reference recipe), or `muon`: Muon on the hidden weight matrices and AdamW (at
            `learning_rate`) on embeddings, head and norms; it reaches a given loss in fewer steps
            (docs/performance.md).
        learning_rate: AdamW's peak learning rate.
        muon_learning_rate: Muon's peak learning rate; null uses `learning_rate`.
        embedding_learning_rate: AdamW's peak learning rate for the input embedding; null uses `learning_rate`.
            Each row is updated only when its token occurs, so it can take a larger one.
        weight_decay: AdamW's decoupled weight decay (on every AdamW parameter).
        muon_weight_decay: Muon's decoupled weight decay on the hidden matrices; null uses `weight_decay`. Keeps a
            model that sees its stories many times from learning them by heart.
        betas: AdamW's betas.
        warmup_steps: Linear warmup steps at the start of `lr_schedule`.
        lr_schedule: `cosine`: warmup, then cosine decay to zero at the run's last step (the recipe). `wsd`: warmup,
            constant, then linear decay to zero over the last `decay_fraction` of the steps.
        decay_fraction: With `wsd`, the share of the run spent decaying.
        schedule_by_max_time: With `trainer.max_time`, the schedule follows whichever is further along, steps or
            time, so a run that the time limit stops has still decayed to zero by then. The learning rate then
            depends on the machine's speed wherever time leads; under DDP rank 0's clock is used.
    """

    optimizer: Literal["adamw", "muon"] = "adamw"
    learning_rate: float = 1e-4
    muon_learning_rate: Optional[float] = None
    embedding_learning_rate: Optional[float] = None
    weight_decay: float = 0.0
    muon_weight_decay: Optional[float] = None
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = 0.4
    schedule_by_max_time: bool = False

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.learning_rate <= 0:
            raise UserError(f"model.optimization.learning_rate is {self.learning_rate}; it must be positive")
        for name in ("muon_learning_rate", "embedding_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"model.optimization.{name} is {value}; it must be positive, or null for "
                                "model.optimization.learning_rate")
        for name in ("weight_decay", "muon_weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"model.optimization.{name} is {value}; it must be 0 or more")
        if not 0 < self.decay_fraction <= 1:
            raise UserError(f"model.optimization.decay_fraction is {self.decay_fraction}; it must be in (0, 1]")


def configure(named_params: Iterable[tuple[str, torch.Tensor]], options: Optimization, total_steps: int,
              device: torch.device | str = "cpu", time_progress: Optional[Callable[[], float]] = None):
    """The optimizer and its per-step learning-rate schedule for a run of `total_steps` optimizer steps.

    Args:
        named_params: The model's `named_parameters()`.
        options: What `model.optimization` says.
        total_steps: The run's length in optimizer steps (Lightning's `estimated_stepping_batches`).
        device: Where the parameters live: `fused_adamw` picks AdamW's kernel for it.
        time_progress: With `schedule_by_max_time`, a function giving the share of `trainer.max_time` spent; the
            schedule then follows whichever of steps and time is further along.
    """
    named = list(named_params)
    fused = fused_adamw(device)
    if options.optimizer == "muon":
        optimizer = MuonWithAdamW(named, lr=options.learning_rate,
                                  muon_lr=options.muon_learning_rate or options.learning_rate, betas=options.betas,
                                  weight_decay=options.weight_decay, embedding_lr=options.embedding_learning_rate,
                                  muon_weight_decay=options.muon_weight_decay, fused=fused,
                                  ns_dtype=torch.bfloat16 if bf16_is_fast(device) else torch.float32)
    else:
        # One unnamed group logs as `lr`; with an embedding rate, `lr/embedding` and `lr/adamw`.
        params = ([p for _, p in named] if options.embedding_learning_rate is None
                  else adamw_groups(named, options.embedding_learning_rate))
        optimizer = torch.optim.AdamW(params, lr=options.learning_rate, betas=options.betas,
                                      weight_decay=options.weight_decay, fused=fused)
    total = max(1, int(total_steps))
    warmup = min(options.warmup_steps, total)
    if options.lr_schedule == "wsd":
        decay = min(round(options.decay_fraction * total), total - warmup)
        schedule = get_wsd_schedule(optimizer, warmup, decay, num_training_steps=total, decay_type="linear")
    else:
        schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if options.schedule_by_max_time and time_progress is not None:
        schedule.lr_lambdas = [clocked(factor, total, time_progress) for factor in schedule.lr_lambdas]
    return optimizer, schedule


def fused_adamw(device: torch.device | str) -> Optional[bool]:
    """AdamW's `fused` for parameters on `device`: True on a CPU and a CUDA GPU (one kernel pass over each tensor
    instead of one per operation), in every precision; else None, torch's default (foreach).

    Lightning refuses to clip the gradients of a fused optimizer under mixed precision; `TinyStoriesLM` clips them
    itself (`configure_gradient_clipping`).
    """
    return True if torch.device(device).type in ("cpu", "cuda") else None


class RankZeroClock:
    """The share of `trainer.max_time` spent, as rank 0's clock says, equal on every rank without a collective per step.

        clock = RankZeroClock()
        progress = clock(trainer.global_step, read, trainer.strategy.broadcast, every=50)

    DDP keeps the weights equal only if every rank applies the same update, so every rank must use the same learning
    rate. Every `every` steps rank 0's reading is broadcast with its pace (share per step since the last broadcast);
    between broadcasts each rank extrapolates from those numbers by the step count, the same arithmetic everywhere.
    `every=1` reads the clock at each step (one process needs no broadcast, and then this is exact).
    """

    def __init__(self):
        self.anchor: Optional[tuple[int, float, float]] = None  # step, progress, progress per step

    def __call__(self, step: int, read: Callable[[], float], broadcast: Callable, every: int = 1) -> float:
        if self.anchor is None or not 0 <= step - self.anchor[0] < every:
            progress, pace = read(), 0.0
            if self.anchor is not None and step > self.anchor[0]:
                pace = max(0.0, (progress - self.anchor[1]) / (step - self.anchor[0]))
            self.anchor = tuple(broadcast((step, progress, pace)))
        start, progress, pace = self.anchor
        return min(1.0, progress + pace * (step - start))


def clocked(factor: Callable[[int], float], total: int, time_progress: Callable[[], float]) -> Callable[[int], float]:
    # A plain function, so LambdaLR's state_dict leaves it out (it saves callable objects' attributes).
    def at(step: int) -> float:
        return factor(max(step, time_progress() * total))
    return at


class BatchedMuon(torch.optim.Muon):
    """`torch.optim.Muon`, the same update and state, with the Newton-Schulz iterations batched by matrix shape, in
    `ns_dtype`: bf16 as torch's (the default), or fp32 where bf16 products are slow (`configure` decides).

    torch's Muon orthogonalizes one matrix at a time: 15 small products per matrix, 420 a step for the demo's 28
    matrices, each too small to keep a CPU busy. Stacking the matrices of one shape (a tall one transposed, as torch
    does) makes that 15 batched products per shape: 56 against 22 ms a step on the demo's matrices (2-core CPU).
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **options):
        super().__init__(params, **options)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            lr, momentum, weight_decay = float(group["lr"]), group["momentum"], group["weight_decay"]
            by_shape = defaultdict(list)
            for i, (grad, buffer) in enumerate(zip(grads, buffers)):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                wide = update if update.size(0) <= update.size(1) else update.T
                by_shape[wide.shape].append((i, wide))
            for members in by_shape.values():
                ortho = newton_schulz(torch.stack([wide for _, wide in members]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], self.ns_dtype)
                for (i, _), o in zip(members, ortho):
                    param = params[i]
                    param.mul_(1 - lr * weight_decay)
                    param.add_(o if o.shape == param.shape else o.T,
                               alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def newton_schulz(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration on a stack of wide matrices (batch, rows <= cols), in `dtype`
    (torch's: bf16)."""
    a, b, c = coefficients
    x = updates.to(dtype)
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    return param.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name


def adamw_groups(named_params: Iterable[tuple[str, torch.Tensor]], embedding_lr: Optional[float]) -> list[dict]:
    """One group `adamw`, or with `embedding_lr` the input embedding apart as `embedding` (lr/embedding)."""
    named = [(n, p) for n, p in named_params if p.requires_grad]
    if embedding_lr is None:
        return [{"params": [p for _, p in named], "name": "adamw"}]
    return [{"params": [p for n, p in named if "embed_tokens" in n], "name": "embedding", "lr": embedding_lr},
            {"params": [p for n, p in named if "embed_tokens" not in n], "name": "adamw"}]


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], lr: float, muon_lr: float,
                 betas: tuple[float, float], weight_decay: float, embedding_lr: Optional[float] = None,
                 fused: Optional[bool] = None, muon_weight_decay: Optional[float] = None,
                 ns_dtype: torch.dtype = torch.bfloat16):
        named = [(n, p) for n, p in named_params if p.requires_grad]
        # Group names label the learning rates in TensorBoard: lr/muon and lr/adamw.
        self.muon = BatchedMuon([{"params": [p for n, p in named if is_hidden_matrix(n, p)], "name": "muon"}],
                                ns_dtype=ns_dtype, lr=muon_lr, adjust_lr_fn="match_rms_adamw",
                                weight_decay=weight_decay if muon_weight_decay is None else muon_weight_decay)
        self.adamw = torch.optim.AdamW(adamw_groups([(n, p) for n, p in named if not is_hidden_matrix(n, p)],
                                                    embedding_lr), lr=lr, betas=betas, weight_decay=weight_decay,
                                       fused=fused)
        # Share the two optimizers' param-group dicts, so LR schedules and gradient clipping reach both.
        super().__init__([*self.muon.param_groups, *self.adamw.param_groups], defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    @property
    def state(self) -> dict:
        """Both optimizers' per-parameter states. Lightning moves optimizer state by walking `optimizer.state` (to the
        CPU when `fit` ends, `Strategy.teardown`; to the device after a restore): without this it would find this
        wrapper's own, empty one and leave the moments on the GPU."""
        return {**self.muon.state, **self.adamw.state}

    @state.setter
    def state(self, value) -> None:
        pass  # torch.optim.Optimizer.__init__ sets an empty one; the state lives in the two optimizers

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]  # loading made new group dicts
