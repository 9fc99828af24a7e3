"""The model: a `LlamaForCausalLM` built from its architecture, and the LightningModule that trains it.

    llama = build_llama(Architecture(vocab_size=4096, hidden_size=192))    # plain transformers, no Lightning
    module = TinyStoriesLM(Architecture(vocab_size=32000), Optimization())  # the 19.5M reference model
    module = TinyStoriesLM.load_from_checkpoint("last.ckpt")               # a checkpoint rebuilds itself

The architecture knows nothing of data: vocab size and special-token ids are linked in from the tokenizer by the CLI.
How it is trained (`Optimization`, `tinystories/optim.py`) is a separate group of options. Validation reports
`val/loss` (nats per token), `val/ppl` and `val/bpb` (bits per UTF-8 byte of validation text, comparable across
tokenizers: docs/bits-per-byte.md); sums are torchmetrics, so they are reduced across DDP ranks.
"""

import math
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_warn
from torchmetrics import SumMetric
from transformers import LlamaConfig, LlamaForCausalLM

from tinystories.attention import ATTENTION
from tinystories.loss import IGNORE_INDEX, linear_cross_entropy
from tinystories.optim import Optimization, RankZeroClock, configure

# val/* and test/* are computed from torchmetrics sums, which are reduced over DDP ranks before they are logged:
# Lightning's advice to log them with sync_dist=True (averaging equal values once more) does not apply.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")


@dataclass
class Architecture:
    """The shape of the model and how its weights start.

    Args:
        vocab_size: Tokens in the vocabulary (linked from the tokenizer by the CLI).
        hidden_size: Width of the residual stream.
        intermediate_size: SwiGLU width; null computes 8/3 x hidden_size rounded up to a multiple of 128.
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (fewer than query heads is grouped-query attention).
        max_position_embeddings: Longest sequence the model is meant for.
        rope_theta: RoPE base.
        tie_word_embeddings: Share input and output embeddings.
        pad_token_id: Padding id (linked from the tokenizer).
        bos_token_id: Beginning-of-story id (linked from the tokenizer).
        eos_token_id: End-of-story id (linked from the tokenizer).
        zero_init_residual: Start each block's output projections (`o_proj`, `down_proj`) at zero, so every block
            begins as the identity; the rest keeps the Kaiming init.
    """

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: Optional[int] = None
    num_hidden_layers: int = 4
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    bos_token_id: Optional[int] = 1
    eos_token_id: int = 2
    zero_init_residual: bool = False


def mlp_size(hidden_size: int, multiple_of: int = 128) -> int:
    """LLaMA's SwiGLU width: 8/3 of the hidden size, rounded up to a multiple of `multiple_of` (256 -> 768)."""
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


def llama_config(arch: Architecture) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size or mlp_size(arch.hidden_size),
        num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads, max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta, tie_word_embeddings=arch.tie_word_embeddings, pad_token_id=arch.pad_token_id,
        bos_token_id=arch.bos_token_id, eos_token_id=arch.eos_token_id,
    )


def build_llama(arch: Architecture) -> LlamaForCausalLM:
    """A freshly initialised `LlamaForCausalLM`: Kaiming uniform (fan_in, leaky_relu) on every matrix, zero biases."""
    model = LlamaForCausalLM(llama_config(arch))
    model.set_attn_implementation(ATTENTION)  # sdpa, with small heads in fp32 on the CPU (attention.py)
    for name, param in model.named_parameters():
        if param.dim() > 1:
            torch.nn.init.kaiming_uniform_(param, mode="fan_in", nonlinearity="leaky_relu")
        elif name.endswith("bias"):
            torch.nn.init.zeros_(param)
        if arch.zero_init_residual and name.endswith(("o_proj.weight", "down_proj.weight")):
            torch.nn.init.zeros_(param)
    return model


def cpp_compiler() -> Optional[str]:
    """The C++ compiler torch.compile's CPU backend (Inductor) would use, or None."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def as_dataclass(cls, value):
    """`value` as `cls`: the CLI passes dataclasses, a checkpoint's hyperparameters plain dicts."""
    if isinstance(value, cls):
        return value
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dict(value or {}).items() if k in names})


class TinyStoriesLM(LightningModule):
    def __init__(self, architecture: Architecture = Architecture(), optimization: Optimization = Optimization(),
                 compile: bool = False, init_from: Optional[str] = None):
        """A LLaMA trained on stories.

        Args:
            architecture: The model's shape and initialisation.
            optimization: The optimizer and the learning-rate schedule.
            compile: `torch.compile` each decoder layer in place for training steps: faster steps after a one-off
                compile (docs/performance.md). On a CPU it needs a C++ compiler; without one training runs eager,
                with a warning. Parameter names, and so checkpoints, do not change.
            init_from: Start `fit` from the weights of this `.ckpt` or exported folder (fine-tuning), with a fresh
                optimizer, schedule and step count; its architecture must be `architecture`. With `data.tokenizer:
                null` its tokenizer is used. Not a resume: `--ckpt_path` resumes a run, and then this is ignored.
        """
        super().__init__()
        self.architecture = as_dataclass(Architecture, architecture)
        self.optimization = as_dataclass(Optimization, optimization)
        # Plain dicts, so checkpoints load with `weights_only=True` and hparams.yaml reads as YAML.
        optimization_dict = {**asdict(self.optimization), "betas": list(self.optimization.betas)}
        self.save_hyperparameters({"architecture": asdict(self.architecture), "optimization": optimization_dict,
                                   "compile": compile, "init_from": None if init_from is None else str(init_from)})
        self.model = build_llama(self.architecture)
        self.time_progress = 0.0  # elapsed / max_time, with schedule_by_max_time: set before each training step
        self.clock = RankZeroClock()
        # nan_strategy "disable": a NaN batch makes `val/loss` NaN (the default drops it from the nats but not from
        # the token count, so the loss reads low), and no check syncs with the host on each update.
        self.val_nats, self.val_tokens, self.val_bytes = (SumMetric(nan_strategy="disable") for _ in range(3))

    def configure_model(self) -> None:
        # Each decoder layer is compiled on its own ("regional" compilation): the layers share one compiled graph, so
        # a cold start compiles one layer's kernels rather than the whole stack's. `Module.compile` works in place,
        # so parameter names (and checkpoint keys) stay as they are. Validation and generation run eager
        # (`eager()`): their shapes change at every call.
        if not self.hparams.compile or getattr(self, "compiled", False):
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device  # not moved yet
        if device.type == "cpu" and not cpp_compiler():
            rank_zero_warn("model.compile: torch.compile on a CPU needs a C++ compiler and none was found (install g++ "
                           "or clang++, or set CXX); training without compiling")
            return
        if device.type == "cuda":  # Inductor needs Triton there, and Triton a C compiler (`gpu.compile_blocker`)
            from tinystories.gpu import compile_blocker

            if blocker := compile_blocker(device):
                rank_zero_warn(f"model.compile: {blocker}; training without compiling")
                return
        for layer in self.model.model.layers:
            layer.compile()
        self.compiled = True

    def eager(self):
        """A context in which compiled layers run eager (validation, generation)."""
        return torch.compiler.set_stance("force_eager") if getattr(self, "compiled", False) else nullcontext()

    def hidden(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """The last hidden states (after the final norm): what the output head turns into logits."""
        # No KV cache: nothing reuses it, and its state would make each compiled layer a graph of its own.
        with nullcontext() if self.training else self.eager():
            return self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=False).last_hidden_state

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        return self.model.lm_head(self.hidden(input_ids, attention_mask, position_ids))

    def nats(self, batch, weighted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over the batch's real targets, and how many there are; `weighted` applies
        the batch's `loss_weights` (`data.word_weight`) where it has them."""
        # A batch `collate` made without pads (packed blocks) goes in with no mask and default positions: SDPA then runs
        # causal, and transformers checks no mask on the host.
        padded = batch.get("padded", True)
        hidden = self.hidden(batch["input_ids"], batch["attention_mask"] if padded else None,
                             batch["position_ids"] if padded else None)
        # Targets shifted left (the last position predicts nothing). The head and the loss run fused, a chunk of
        # rows at a time (`tinystories/loss.py`): the full logits are never made. A left-padded story's first token
        # follows a pad: nothing predicts it (its bytes are not in num_bytes).
        targets = batch["labels"][:, 1:].masked_fill(batch["attention_mask"][:, :-1] == 0, IGNORE_INDEX)
        targets = F.pad(targets, (0, 1), value=IGNORE_INDEX)
        weights = batch.get("loss_weights") if weighted else None
        if weights is not None:  # a label's weight goes with it to the position that predicts it
            weights = F.pad(weights[:, 1:], (0, 1), value=1.0)
        # Compiled chunks only where the layers are compiled: model.compile on, and a device that can compile.
        return (linear_cross_entropy(hidden, self.model.lm_head.weight, targets, weights,
                                     compiled=getattr(self, "compiled", False)),
                (targets != IGNORE_INDEX).sum())

    def training_step(self, batch, batch_idx):
        # With `data.word_weight`, the weighted loss: what is optimized (validation stays plain)
        nats, count = self.nats(batch, weighted=True)
        loss = nats / count
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        nats, count = self.nats(batch)
        self.val_nats.update(nats)
        self.val_tokens.update(count)
        self.val_bytes.update(batch["num_bytes"].sum())

    test_step = validation_step  # `test` scores data.test_split the same way

    def on_validation_epoch_end(self):
        self.log_scores("val")

    def on_test_epoch_end(self):
        self.log_scores("test")

    def log_scores(self, prefix: str) -> None:
        nats, tokens, num_bytes = self.val_nats.compute(), self.val_tokens.compute(), self.val_bytes.compute()
        loss = nats / tokens
        self.log(f"{prefix}/loss", loss, prog_bar=True)
        self.log(f"{prefix}/ppl", torch.exp(loss))
        self.log(f"{prefix}/bpb", nats / math.log(2) / num_bytes, prog_bar=True)
        for metric in (self.val_nats, self.val_tokens, self.val_bytes):
            metric.reset()

    def configure_optimizers(self):
        clock = (lambda: self.time_progress) if self.timer() is not None else None
        optimizer, schedule = configure(self.model.named_parameters(), self.optimization,
                                        self.trainer.estimated_stepping_batches, self.device, clock)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "lr"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping (`trainer.gradient_clip_val`), also for a fused AdamW under mixed precision.

        Lightning's `MixedPrecision.clip_gradients` refuses any optimizer that unscales inside its step
        (`_step_supports_amp_scaling`: fused AdamW), under bf16-mixed as under 16-mixed. Clipping needs unscaled
        gradients, so a 16-mixed scaler unscales them here first; `GradScaler.step` then hands the optimizer only
        `found_inf` and no scale (torch/amp/grad_scaler.py), so each gradient is unscaled once. bf16-mixed has no
        scaler: its gradients are never scaled."""
        plugin = self.trainer.precision_plugin
        if not (gradient_clip_val and isinstance(plugin, MixedPrecision)
                and getattr(optimizer, "_step_supports_amp_scaling", False)):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if plugin.scaler is not None:
            plugin.scaler.unscale_(optimizer)
        algorithm = GradClipAlgorithmType((gradient_clip_algorithm or "norm").lower())
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)

    def timer(self) -> Optional[Timer]:
        """Lightning's `Timer` callback, which `trainer.max_time` adds (its elapsed time survives a resume)."""
        if not self.optimization.schedule_by_max_time:
            return None
        return next((c for c in self.trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None),
                    None)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if (timer := self.timer()) is not None:
            def read() -> float:
                elapsed = timer.time_elapsed()
                return min(1.0, elapsed / max(elapsed + timer.time_remaining(), 1e-9))

            # Every rank steps with rank 0's rate: under DDP broadcast every log_every_n_steps steps, not every step
            every = 1 if self.trainer.world_size == 1 else self.trainer.log_every_n_steps
            self.time_progress = self.clock(self.trainer.global_step, read, self.trainer.strategy.broadcast, every)

    def on_fit_start(self) -> None:
        # After Lightning restored a --ckpt_path (then its weights win) and before the first step.
        if self.hparams.get("init_from") and self.trainer.ckpt_path is None:
            from tinystories import checkpoint

            self.model.load_state_dict(checkpoint.weights(self.hparams.init_from, "model.init_from"), strict=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # For the model card (`export`): the latest validation metrics, what turns steps into samples, and the
        # precision it trained in.
        trainer = self.trainer
        checkpoint["val_metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        checkpoint["train_shape"] = {"world_size": trainer.world_size,
                                     "accumulate_grad_batches": trainer.accumulate_grad_batches}
        checkpoint["precision"] = str(trainer.precision)  # as resolved: the saved config.yaml keeps null

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
