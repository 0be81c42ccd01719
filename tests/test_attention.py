"""Attention: SDPA is what BEiT runs, and the cached relative position bias changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PREPROCESSOR_CONFIG, TINY_LABELS
from media import photo

from labelcast.model.checkpoint import resolve_checkpoint
from labelcast.model.classifier import Classifier, ModelConfig, load_torch_model
from labelcast.model.position_bias import CachedPositionBias, cache_position_bias

# SDPA and the eager softmax(QK^T)V round differently: ~1e-6 in fp32 on the CPU.
SDPA_MAX_ABS_LOGIT_DIFF = 1e-4


@pytest.fixture(scope="module")
def biased_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BEiT with a relative position bias per layer, as beit-base-patch16-224 has."""
    from transformers import BeitConfig, BeitForImageClassification

    torch.manual_seed(1)
    config = BeitConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        use_relative_position_bias=True,
        use_mean_pooling=True,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    model = BeitForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(40)
        # Random tables are zeros: make the bias matter.
        for layer in model.beit.layers:
            layer.relative_position_bias.relative_position_bias_table.normal_(0, 2)
    directory = tmp_path_factory.mktemp("beit-rel-pos")
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return directory


def real_photos() -> list[np.ndarray]:
    return [photo(name) for name in ("chelsea", "coffee", "astronaut", "rocket")]


def pixels(model: Path) -> torch.Tensor:
    classifier = Classifier.load(ModelConfig(id=str(model), device="cpu"))
    return classifier.preprocess(real_photos())


def transformers_logits(model: Path, inputs: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits of the model as transformers loads it: no labelcast wrapping."""
    from transformers import AutoModelForImageClassification

    loaded = AutoModelForImageClassification.from_pretrained(model, **kwargs).eval()
    with torch.inference_mode():
        return loaded(pixel_values=inputs).logits


def test_beit_is_loaded_with_sdpa_attention(biased_model):
    model = load_torch_model(
        resolve_checkpoint(str(biased_model), None, allow_pickle=False), allow_pickle=False
    )
    assert model.config._attn_implementation == "sdpa"


def test_sdpa_logits_match_eager_attention_on_real_photos(biased_model):
    inputs = pixels(biased_model)
    sdpa = transformers_logits(biased_model, inputs, attn_implementation="sdpa")
    eager = transformers_logits(biased_model, inputs, attn_implementation="eager")
    assert (sdpa - eager).abs().max() <= SDPA_MAX_ABS_LOGIT_DIFF
    assert torch.equal(sdpa.argmax(dim=1), eager.argmax(dim=1))


def test_the_cached_position_bias_gives_the_same_logits(biased_model):
    # given labelcast's classifier (bias cached) and the model as transformers runs it
    classifier = Classifier.load(ModelConfig(id=str(biased_model), device="cpu"))
    inputs = classifier.preprocess(real_photos())

    # when both classify the same photos, labelcast twice (the second time from the cache)
    first = classifier.forward(inputs)
    second = classifier.forward(inputs)
    plain = transformers_logits(biased_model, inputs)

    # then the logits are the same, bit for bit: the cached bias is the computed one
    assert torch.equal(first, plain)
    assert torch.equal(second, plain)
    # (and the second pass did take it from the cache)
    wrappers = [m for m in classifier._model.modules() if isinstance(m, CachedPositionBias)]
    assert len(wrappers) == 2 and all(len(w._cache) == 1 for w in wrappers)


def test_the_cache_follows_the_weights_and_the_mode(biased_model):
    # given the model with its biases cached
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(biased_model).eval()
    assert cache_position_bias(model) == 2
    assert cache_position_bias(model) == 0  # already wrapped: nothing more
    module = model.beit.layers[0].relative_position_bias
    assert isinstance(module, CachedPositionBias)
    table = module.inner.relative_position_bias_table

    def bias() -> torch.Tensor:
        with torch.inference_mode():
            return module((14, 14), False, 197).clone()

    before = bias()
    # when the table changes in place (as load_state_dict does), the bias follows
    with torch.no_grad():
        table.mul_(2)
    after = bias()
    assert not torch.equal(before, after)
    with torch.no_grad():
        table.div_(2)
    assert torch.equal(bias(), before)
    # a cast is followed too
    model.double()
    assert bias().dtype == torch.float64
    # and in training mode or with gradients on, the bias is computed afresh every time
    with torch.inference_mode():
        assert module((14, 14), False, 197) is module((14, 14), False, 197)
        module.train()
        assert module((14, 14), False, 197) is not module((14, 14), False, 197)
        module.eval()
    with torch.enable_grad():
        assert module((7, 7), False, 50) is not module((7, 7), False, 50)
