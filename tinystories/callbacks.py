"""Sample stories during training, so a user sees the model learn to write.

At each validation, rank zero continues a few fixed prompts and logs them to TensorBoard as text (tab "TEXT");
when `fit` ends they are printed with the final validation metrics. Configured under `samples:` in the YAML.
"""

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from tinystories.generate import sample_stories

DEFAULT_PROMPTS = ("Once upon a time", "Lily and her dog", "One day, a little boy named Tom")


class SampleStories(Callback):
    def __init__(self, prompts: list[str] = list(DEFAULT_PROMPTS), max_new_tokens: int = 120,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, seed: int = 0):
        """Args:
            prompts: Story beginnings continued at each validation; empty to turn sampling off.
            max_new_tokens: Most tokens generated per prompt.
            temperature: Sampling temperature.
            top_k: Sample among the k likeliest tokens.
            top_p: Sample within this nucleus probability mass.
            seed: Seed for sampling, so samples at different steps differ only because the model did.
        """
        self.prompts = list(prompts)
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
        self.seed = seed
        self.latest: list[str] = []

    def sample(self, pl_module: LightningModule, tokenizer) -> list[str]:
        stories = sample_stories(pl_module.model, tokenizer, self.prompts, seed=self.seed,
                                 batch_size=len(self.prompts), **self.settings)
        return [story["prompt"] + story["completion"] for story in stories]

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.prompts or trainer.sanity_checking or trainer.datamodule is None:
            return
        self.latest = self.sample(pl_module, trainer.datamodule.tokenizer)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            text = "\n\n---\n\n".join(self.latest)
            experiment.add_text("samples", text, global_step=trainer.global_step)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
            print(f"\nFinal validation (step {trainer.global_step}): {shown}")
        if self.latest:
            print("\nSample stories:")
            for story in self.latest:
                print(f"\n{story}\n" + "-" * 40)


class ValidateAtEnd(Callback):
    """Validate (and so checkpoint) after the last training step, not only every `val_check_interval` steps.

    Lightning validates when `should_stop` is set after a batch, so the final step's metrics and `last.ckpt`
    exist however `max_steps` or the epoch length line up with the validation interval.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        last_step = 0 < trainer.max_steps <= trainer.global_step
        epoch_loop = trainer.fit_loop.epoch_loop
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
        if last_step or (last_epoch and epoch_loop.batch_progress.is_last_batch):
            trainer.should_stop = True
