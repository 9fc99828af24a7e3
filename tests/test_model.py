import math

import pytest
import torch

from tests.conftest import LLAMA_TOKENIZER, needs_shared, tiny_model
from tinystories.data import collate
from tinystories.model import Architecture, TinyStoriesLM, mlp_size
from tinystories.optim import Optimization
from tinystories.tokenizer import load_tokenizer


@needs_shared
def test_reference_model_has_19_532_032_parameters_with_llama2_tokenizer():
    tokenizer = load_tokenizer(str(LLAMA_TOKENIZER))
    model = TinyStoriesLM(Architecture(vocab_size=len(tokenizer)), Optimization())
    assert model.model.config.intermediate_size == 768 == mlp_size(256)
    assert model.model.config.num_key_value_heads == 8 and not model.model.config.tie_word_embeddings
    assert model.num_parameters() == 19_532_032


def test_mlp_size_rounds_8_thirds_up_to_128():
    assert [mlp_size(h) for h in (32, 192, 256, 512)] == [128, 512, 768, 1408]


def test_kaiming_uniform_init():
    model = tiny_model()
    for name, param in model.model.named_parameters():
        if param.dim() > 1:
            bound = math.sqrt(2.0) * math.sqrt(3.0 / param.shape[1])  # leaky_relu(a=0) gain, fan_in
            assert param.abs().max() <= bound + 1e-6, name
            assert abs(param.std().item() - bound / math.sqrt(3)) < 0.1 * bound, name
        else:
            assert torch.all(param == 1.0), name  # RMSNorm weights keep their ones


def test_left_padding_does_not_change_a_storys_loss():
    torch.manual_seed(0)
    model = tiny_model().eval()
    stories = [torch.randint(3, 300, (n,)).tolist() for n in (37, 5, 20)]
    with torch.no_grad():
        batch = collate([{"input_ids": s, "num_bytes": 0} for s in stories], pad_token_id=0)
        logits = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        for row, story in enumerate(stories):
            alone = collate([{"input_ids": story, "num_bytes": 0}], pad_token_id=0)
            nats_alone, count = model.nats(alone)
            n = len(story)
            padded = torch.nn.functional.cross_entropy(logits[row, -n:-1], torch.tensor(story[1:]), reduction="sum")
            torch.testing.assert_close(padded / (n - 1), nats_alone / count, rtol=0, atol=1e-5)
        # And the batch scores exactly each story's own targets: nothing is predicted from a pad.
        nats, count = model.nats(batch)
        alone = [model.nats(collate([{"input_ids": s, "num_bytes": 0}], pad_token_id=0)) for s in stories]
        assert int(count) == sum(len(s) - 1 for s in stories)
        torch.testing.assert_close(nats, sum(n for n, _ in alone), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("autocast", [False, True])
def test_nats_is_fp32_cross_entropy_of_the_shifted_logits(autocast):
    torch.manual_seed(0)
    model = tiny_model()
    batch = collate([{"input_ids": torch.randint(3, 300, (n,)).tolist(), "num_bytes": 0} for n in (30, 7)], 0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        nats, count = model.nats(batch)
        logits = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    targets = batch["labels"][:, 1:].masked_fill(batch["attention_mask"][:, :-1] == 0, -100)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                                 ignore_index=-100, reduction="sum")
    assert nats.dtype == torch.float32 and int(count) == 29 + 6  # no story's first token is a target
    torch.testing.assert_close(nats, expected, rtol=1e-6, atol=1e-4)


def test_gradients_stay_finite_with_left_padding():
    torch.manual_seed(0)
    model = tiny_model()
    batch = collate([{"input_ids": [5] * n, "num_bytes": 0} for n in (30, 2)], pad_token_id=0)
    nats, count = model.nats(batch)
    (nats / count).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
def test_compiled_training_keeps_checkpoint_keys_and_learns(tmp_path, tiny_tokenizer_dir):
    from tests.conftest import fit_args
    from tinystories.cli import cli_main

    torch._dynamo.utils.counters.clear()
    cli = cli_main(fit_args(tmp_path, tiny_tokenizer_dir, "--model.compile", "true", "--trainer.max_steps", "4",
                            "--trainer.limit_val_batches", "2", "--data.packing", "true",  # one shape: 8 x 128
                            "--model.architecture.num_hidden_layers", "4"))
    model = cli.model
    # Training went through torch.compile one decoder layer at a time, one graph shared by the 4 layers (and one
    # more with a mask if a batch held the packed set's padded last block), not a graph per layer.
    assert 1 <= torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    # compiled in place: the same modules, each with its compiled call
    assert all(type(layer).__name__ == "LlamaDecoderLayer" and layer._compiled_call_impl is not None
               for layer in model.model.model.layers)
    batch = next(iter(cli.datamodule.train_dataloader()))
    compiled = model.train().nats(batch)[0].detach()
    with torch.no_grad():
        eager = model.eval().nats(batch)[0]  # validation and generation run eager
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=0)
    checkpoint = torch.load(next((tmp_path / "lightning_logs").glob("version_0/checkpoints/last.ckpt")),
                            weights_only=True)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    assert set(checkpoint["state_dict"]) == {f"model.{k}" for k in cli.model.model.state_dict()}
