"""Gradient clipping in every precision a CPU can run, with each shipped optimizer, through Lightning's own loop.

Lightning refuses to clip for an optimizer that unscales inside its step (fused AdamW) under mixed precision;
`TinyStoriesLM.configure_gradient_clipping` clips it itself, unscaling a 16-mixed scaler's gradients first. Each case
trains a few steps with a tiny clip value and reads the gradients' total norm after each step (what the optimizer
stepped with: Lightning runs the closure inside `optimizer.step`, and no optimizer here changes a gradient): it is
the clip value, and the weights move."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision

from tests.conftest import tiny_model

CLIP = 1e-3  # far below the tiny model's gradient norm at its start (about 1)


class NormAtStep(Callback):
    """The total gradient norm, and the largest gradient, after each optimizer step."""

    def __init__(self):
        self.norms, self.largest = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad.float() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.largest.append(max(float(g.abs().max()) for g in grads))


def batches(n: int = 3, vocab: int = 300):
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (n, 4, 24))
    return [{"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x), "padded": False} for x in ids]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_clipping_works_in_every_precision_with_each_optimizer(tmp_path, precision, optimizer):
    model = tiny_model(optimizer=optimizer, learning_rate=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Lightning turns `precision="16-mixed"` into bf16-mixed on a CPU; the plugin itself runs fp16 autocast with a
    # gradient scaler there, as on a GPU (a scale of 2^8: the tiny model's fp16 gradients stay finite).
    options = ({"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**8))]}
               if precision == "16-mixed" else {"precision": precision})
    record = NormAtStep()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=3, gradient_clip_val=CLIP, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[record], default_root_dir=tmp_path, **options)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches(), batch_size=None))
    adamw = trainer.optimizers[0].adamw if optimizer == "muon" else trainer.optimizers[0]
    assert adamw.defaults["fused"] is True  # the fastest AdamW kernel is kept
    assert trainer.global_step == 3 and len(record.norms) == 3
    assert record.norms == pytest.approx([CLIP] * 3, rel=1e-3)  # clipped, and unscaled under 16-mixed
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.endswith("q_proj.weight"))


def test_clipping_by_value_with_a_fused_adamw_under_mixed_precision(tmp_path):
    model = tiny_model(learning_rate=1e-3)
    record = NormAtStep()
    trainer = Trainer(accelerator="cpu", max_steps=2, gradient_clip_val=CLIP, gradient_clip_algorithm="value",
                      precision="bf16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches(), batch_size=None))
    assert record.largest == pytest.approx([CLIP] * 2)
