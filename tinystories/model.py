"""The LightningModule: a `LlamaForCausalLM` built from hyperparameters, trained with AdamW (or Muon) on a schedule.

    model = TinyStoriesLM(vocab_size=32000)                       # the 19.5M reference model
    model = TinyStoriesLM.load_from_checkpoint("last.ckpt")       # a checkpoint rebuilds itself

The model knows nothing of data: vocab size and special-token ids are linked in from the tokenizer by the CLI.
Validation reports `val/loss` (nats per token), `val/ppl` and `val/bpb` (bits per UTF-8 byte of validation
text, comparable across tokenizers); sums are torchmetrics, so they are reduced across DDP ranks.
"""

import math
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import SumMetric
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup, get_wsd_schedule

from tinystories import InputError
from tinystories.attention import ATTENTION
from tinystories.loss import IGNORE_INDEX, linear_cross_entropy
from tinystories.optim import MuonWithAdamW, adamw_groups


def mlp_size(hidden_size: int, multiple_of: int = 128) -> int:
    """LLaMA's SwiGLU width: 8/3 of the hidden size, rounded up to a multiple of `multiple_of` (256 -> 768)."""
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


def cpp_compiler() -> Optional[str]:
    """The C++ compiler torch.compile's CPU backend (Inductor) would use, or None."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def zero_residual_outputs(model: torch.nn.Module) -> None:
    """Zero each block's last projections (attention `o_proj`, MLP `down_proj`): every block starts as the identity."""
    for name, param in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            torch.nn.init.zeros_(param)


def kaiming_init(model: torch.nn.Module) -> None:
    """Kaiming uniform (fan_in, leaky_relu) on every weight with more than one dimension, zeros on biases."""
    for name, param in model.named_parameters():
        if param.dim() > 1:
            torch.nn.init.kaiming_uniform_(param, mode="fan_in", nonlinearity="leaky_relu")
        elif name.endswith("bias"):
            torch.nn.init.zeros_(param)


class TinyStoriesLM(LightningModule):
    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        intermediate_size: Optional[int] = None,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 8,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        tie_word_embeddings: bool = False,
        pad_token_id: int = 0,
        bos_token_id: Optional[int] = 1,
        eos_token_id: int = 2,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        optimizer: Literal["adamw", "muon"] = "adamw",
        muon_learning_rate: Optional[float] = None,
        muon_weight_decay: Optional[float] = None,
        embedding_learning_rate: Optional[float] = None,
        lr_schedule: Literal["cosine", "wsd"] = "cosine",
        decay_fraction: float = 0.4,
        zero_init_residual: bool = False,
        schedule_by_max_time: bool = False,
        compile: bool = False,
    ):
        """The model's shape and its training.

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
            learning_rate: AdamW peak learning rate.
            weight_decay: AdamW weight decay.
            betas: AdamW betas.
            warmup_steps: Linear warmup steps at the start of `lr_schedule`.
            optimizer: `adamw` (the reference recipe), or `muon`: Muon on the hidden weight matrices and AdamW
                (at `learning_rate`) on embeddings, head and norms; reaches a given loss in fewer steps (README).
            muon_learning_rate: Muon's peak learning rate; null uses `learning_rate`.
            muon_weight_decay: Muon's decoupled weight decay on the hidden matrices; null uses `weight_decay`. The
                demo's 7,711 real stories go past 3.6 to 5 times in its 10 minutes; 0.2 here keeps the model
                from learning them by heart (0.7865 against 0.8012 bpb after 1,400 steps; README).
            embedding_learning_rate: AdamW's peak learning rate for the input embedding; null uses `learning_rate`.
                Each row is updated only when its token occurs, so it can take a larger one (demo: 0.2).
            lr_schedule: `cosine`: warmup, then cosine decay to zero at the run's last step (the recipe). `wsd`:
                warmup, constant, then linear decay to zero over the last `decay_fraction` of the steps.
            decay_fraction: With `wsd`, the share of the run spent decaying.
            zero_init_residual: Start each block's output projections (`o_proj`, `down_proj`) at zero, so every
                block begins as the identity; the rest keeps the Kaiming init.
            schedule_by_max_time: With `trainer.max_time`, the schedule follows whichever is further along, steps
                (done / max_steps) or time (elapsed / max_time), so a run that the time limit stops has still warmed
                up and decayed to zero by then (the demo on a slower machine: fewer steps, fully annealed). The
                learning rate then depends on the machine's speed wherever time leads. Under DDP rank 0's clock is
                used. Without `trainer.max_time` it changes nothing.
            compile: `torch.compile` each decoder layer for training (the demo on a 2-core CPU: 11-16% faster
                steps after about 36 s of compiling from a cold cache; README). On a CPU it needs a C++ compiler;
                without one training runs eager, with a warning. Parameter names stay as they are, so checkpoints do
                not change.
        """
        super().__init__()
        if learning_rate <= 0:
            raise InputError(f"model.learning_rate is {learning_rate}; it must be positive")
        for name, value in (("muon_learning_rate", muon_learning_rate), ("embedding_learning_rate",
                                                                          embedding_learning_rate)):
            if value is not None and value <= 0:
                raise InputError(f"model.{name} is {value}; it must be positive, or null for model.learning_rate")
        for name, value in (("weight_decay", weight_decay), ("muon_weight_decay", muon_weight_decay)):
            if value is not None and value < 0:
                raise InputError(f"model.{name} is {value}; it must be 0 or more")
        if not 0 < decay_fraction <= 1:
            raise InputError(f"model.decay_fraction is {decay_fraction}; it must be in (0, 1]")
        self.save_hyperparameters()
        self.time_progress = 0.0  # elapsed / max_time, with schedule_by_max_time: set before each training step
        self.model = LlamaForCausalLM(self.llama_config())
        self.model.set_attn_implementation(ATTENTION)  # sdpa, with small heads in fp32 on the CPU (attention.py)
        kaiming_init(self.model)
        if zero_init_residual:
            zero_residual_outputs(self.model)
        self.val_nats, self.val_tokens, self.val_bytes = SumMetric(), SumMetric(), SumMetric()

    def llama_config(self) -> LlamaConfig:
        hp = self.hparams
        return LlamaConfig(
            vocab_size=hp.vocab_size,
            hidden_size=hp.hidden_size,
            intermediate_size=hp.intermediate_size or mlp_size(hp.hidden_size),
            num_hidden_layers=hp.num_hidden_layers,
            num_attention_heads=hp.num_attention_heads,
            num_key_value_heads=hp.num_key_value_heads,
            max_position_embeddings=hp.max_position_embeddings,
            rope_theta=hp.rope_theta,
            tie_word_embeddings=hp.tie_word_embeddings,
            pad_token_id=hp.pad_token_id,
            bos_token_id=hp.bos_token_id,
            eos_token_id=hp.eos_token_id,
        )

    def configure_model(self) -> None:
        # Each decoder layer is compiled on its own ("regional" compilation): the layers share one compiled graph, so
        # a cold start compiles one layer's kernels rather than the whole stack's (the demo on 2 cores: 36 against
        # 50 s, the same step time). Training steps only: validation batches and generation change shape at every
        # call. The compiled layers are kept out of the module tree (no `_orig_mod.` in checkpoint keys); they
        # share the parameters of `self.model`.
        if self.hparams.compile and "compiled" not in self.__dict__:
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device  # not moved yet
            if device.type == "cpu" and not cpp_compiler():
                rank_zero_warn("model.compile: torch.compile on a CPU needs a C++ compiler and none was found (install "
                               "g++ or clang++, or set CXX); training without compiling")
                return
            object.__setattr__(self, "compiled", torch.nn.ModuleList(torch.compile(layer)
                                                                    for layer in self.model.model.layers))

    def hidden(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        """The last hidden states (after the final norm): what the output head turns into logits."""
        body = self.model.model
        eager = body.layers
        if self.training and "compiled" in self.__dict__:
            body._modules["layers"] = self.compiled  # for this call only
        try:
            # No KV cache: nothing reuses it, and its state would make each compiled layer a graph of its own.
            return body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False).last_hidden_state
        finally:
            body._modules["layers"] = eager

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        return self.model.lm_head(self.hidden(input_ids, attention_mask, position_ids))

    def nats(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy over the batch's real targets, and how many there are."""
        hidden = self.hidden(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        # Targets shifted left (the last position predicts nothing). The head and the loss run fused, a chunk of
        # rows at a time (`tinystories/loss.py`): the full logits (8 x 512 x 32,000 for the 19.5M model) are never
        # made. A left-padded story's first token follows a pad: nothing predicts it (its bytes are not in num_bytes).
        targets = batch["labels"][:, 1:].masked_fill(batch["attention_mask"][:, :-1] == 0, IGNORE_INDEX)
        targets = F.pad(targets, (0, 1), value=IGNORE_INDEX)
        return linear_cross_entropy(hidden, self.model.lm_head.weight, targets), (targets != IGNORE_INDEX).sum()

    def training_step(self, batch, batch_idx):
        nats, count = self.nats(batch)
        loss = nats / count
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        nats, count = self.nats(batch)
        self.val_nats.update(nats)
        self.val_tokens.update(count)
        self.val_bytes.update(batch["num_bytes"].sum())

    def on_validation_epoch_end(self):
        nats, tokens, num_bytes = self.val_nats.compute(), self.val_tokens.compute(), self.val_bytes.compute()
        loss = nats / tokens
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))
        self.log("val/bpb", nats / math.log(2) / num_bytes, prog_bar=True)
        for metric in (self.val_nats, self.val_tokens, self.val_bytes):
            metric.reset()

    def configure_optimizers(self):
        hp = self.hparams
        # On the CPU, AdamW's fused kernel: one pass over each tensor instead of one per operation (12 against 58 ms
        # a step on the 19.5M model's embedding and head). Elsewhere torch's default; Lightning refuses gradient
        # clipping with a fused optimizer under 16-mixed's gradient scaler.
        fused = True if self.device.type == "cpu" else None
        if hp.optimizer == "muon":
            optimizer = MuonWithAdamW(self.model.named_parameters(), lr=hp.learning_rate,
                                      muon_lr=hp.muon_learning_rate or hp.learning_rate, betas=tuple(hp.betas),
                                      weight_decay=hp.weight_decay, embedding_lr=hp.embedding_learning_rate,
                                      muon_weight_decay=hp.muon_weight_decay,
                                      fused=fused)
        else:
            # One unnamed group logs as `lr`, as before; with an embedding rate, `lr/embedding` and `lr/adamw`.
            params = (adamw_groups(self.model.named_parameters(), hp.embedding_learning_rate)
                      if hp.embedding_learning_rate is not None else self.parameters())
            optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, betas=tuple(hp.betas),
                                          weight_decay=hp.weight_decay, fused=fused)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(hp.warmup_steps, total)
        if hp.lr_schedule == "wsd":
            decay = min(round(hp.decay_fraction * total), total - warmup)
            schedule = get_wsd_schedule(optimizer, warmup, decay, num_training_steps=total, decay_type="linear")
        else:
            schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        if hp.schedule_by_max_time and self.timer() is not None:
            schedule.lr_lambdas = [self.clocked(factor, total) for factor in schedule.lr_lambdas]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "lr"}}

    def timer(self) -> Optional[Timer]:
        """Lightning's `Timer` callback, which `trainer.max_time` adds (its elapsed time survives a resume)."""
        return next((c for c in self.trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None),
                    None)

    def clocked(self, factor: Callable[[int], float], total: int) -> Callable[[int], float]:
        # A plain function, so LambdaLR's state_dict leaves it out (it saves callable objects' attributes).
        def at(step: int) -> float:
            return factor(max(step, self.time_progress * total))
        return at

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.hparams.schedule_by_max_time and (timer := self.timer()) is not None:
            elapsed = timer.time_elapsed()
            progress = min(1.0, elapsed / max(elapsed + timer.time_remaining(), 1e-9))
            self.time_progress = self.trainer.strategy.broadcast(progress)  # every rank steps with rank 0's rate

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # For the model card (`export`): the latest validation metrics, and what turns steps into samples.
        trainer = self.trainer
        checkpoint["val_metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        checkpoint["train_shape"] = {"world_size": trainer.world_size,
                                     "accumulate_grad_batches": trainer.accumulate_grad_batches}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
