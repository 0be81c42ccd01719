"""Zero-shot classification (issue #22): CLIP and SigLIP checkpoints labelled by model.prompts.

The checkpoints are tiny random CLIP and SigLIP models made here with transformers, each
with a real tokenizer built offline (CLIP: a byte-level BPE vocabulary written below;
SigLIP: a SentencePiece model trained on a few sentences) and the hub's preprocessing
config, saved and loaded with ``from_pretrained`` as a hub checkpoint would be.

Measured with transformers 5.24, Pillow 13.0 and torch 2.13 (CPU, fp32) on scikit-image's
photos (the numbers the tolerances below rest on):

- pixel values against the checkpoints' PIL processors (CLIPImageProcessorPil: shortest
  edge 224, bicubic, center crop; SiglipImageProcessorPil: 224x224 bicubic), photos at
  native size and 180x320: within one uint8 level, as for BEiT in test_preprocess.py.
- logits against the model's own forward pass (``logits_per_image``) with the processor's
  inputs: on the processor's pixel values 0 (CLIP) and 5e-7 (SigLIP); from ``uint8``
  through labelcast's preprocessing, max |Δ| 0.0042 for CLIP logits in [-25, 14] (its
  scale is 100) and 6e-4 for SigLIP, the same top-1 everywhere. Scores against
  transformers' zero-shot-image-classification pipeline: max |Δ| 9e-5.
- the ONNX image tower with the prompts' head against torch: logits within 1e-4.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from helpers import read_events, require, run_cli, write_config
from media import PHOTOS, make_clip, photo
from pydantic import ValidationError

from labelcast import LabelEvent, Pipeline, load_config
from labelcast.errors import ConfigError
from labelcast.model.classifier import Classifier, ModelConfig

CLIP_PROMPTS = {
    "cat": ["a photo of a cat", "a tabby cat"],
    "coffee": ["a cup of coffee"],
    "rocket": ["a rocket on the launch pad", "a space rocket"],
    "astronaut": ["an astronaut in a space suit"],
}
SIGLIP_LABELS = ["cat", "coffee", "rocket", "astronaut"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

LOGITS_TOLERANCE = 0.02
SCORES_TOLERANCE = 1e-3

# Words the tiny BPE vocabulary merges whole (any other text still tokenizes, by bytes).
_CLIP_WORDS = ["a", "photo", "of", "cat", "tabby", "cup", "coffee", "rocket", "space", "on"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's (and CLIP's) reversible byte -> printable character map."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(code) for code in codes], strict=True))


def make_clip_tokenizer() -> Any:
    """A CLIP BPE tokenizer: every byte, every byte ending a word, merges for a few words."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    merges: list[tuple[str, str]] = []
    for word in _CLIP_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = (parts[0], parts[1])
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1], *parts[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def make_siglip_tokenizer(folder: Path) -> Any:
    """A SigLIP tokenizer on a SentencePiece model trained here on a few sentences."""
    import sentencepiece
    from transformers import SiglipTokenizer

    sentences = [
        "a photo of a cat",
        "a cup of coffee",
        "a photo of a rocket",
        "an astronaut in a space suit",
        "a parcel on the doormat",
        "an empty street at night",
    ] * 10
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=64,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)


_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
_TOWER |= {"num_attention_heads": 2}


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a random CLIP (ViT-B/32's shape, shrunk) with its tokenizer and hub preprocessing."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = make_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            **_TOWER,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**_TOWER, "image_size": 224, "patch_size": 32},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # trained CLIPs end at their clamp, 100
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(folder)
    return folder


def make_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    """Save a random SigLIP (base-patch16-224's preprocessing) with a SentencePiece tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    tokenizer = make_siglip_tokenizer(folder)
    config = SiglipConfig(
        text_config={
            **_TOWER,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**_TOWER, "image_size": 224, "patch_size": 32},
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessorPil(
        size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="module")
def clip_classifier(tiny_clip: Path) -> Classifier:
    return Classifier.load(ModelConfig(id=str(tiny_clip), device="cpu", prompts=CLIP_PROMPTS))


@pytest.fixture(scope="module")
def siglip_classifier(tiny_siglip: Path) -> Classifier:
    return Classifier.load(ModelConfig(id=str(tiny_siglip), device="cpu", prompts=SIGLIP_LABELS))


def _photos() -> list[npt.NDArray[np.uint8]]:
    return [photo(name) for name in PHOTOS] + [photo(name, (180, 320)) for name in PHOTOS]


def _pil(images: list[npt.NDArray[np.uint8]]) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(image) for image in images]


# -- loading and preprocessing -----------------------------------------------------------


def test_the_checkpoints_load_with_transformers_own_auto_classes(tiny_clip, tiny_siglip):
    from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

    # given the saved checkpoints, when transformers loads them as any hub checkpoint
    for folder, model_type in ((tiny_clip, "clip"), (tiny_siglip, "siglip")):
        model = AutoModelForZeroShotImageClassification.from_pretrained(folder)
        processor = AutoProcessor.from_pretrained(folder)
        # then they are zero-shot models with their processor (tokenizer and PIL images)
        assert model.config.model_type == model_type
        assert processor.tokenizer("a photo of a cat")["input_ids"]
        assert type(processor.image_processor).__name__.endswith("ImageProcessorPil")


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_preprocessing_matches_the_checkpoints_processor(
    family, clip_classifier, siglip_classifier, tiny_clip, tiny_siglip
):
    from transformers import AutoProcessor

    # given real photos and the checkpoint's own (PIL) image processor
    classifier = clip_classifier if family == "clip" else siglip_classifier
    processor = AutoProcessor.from_pretrained(tiny_clip if family == "clip" else tiny_siglip)
    images = _photos()
    # when labelcast preprocesses them from uint8 (in torch)
    ours = classifier.preprocess(images)
    reference = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    # then the pixel values agree within two uint8 levels, and on average far closer
    assert ours.shape == reference.shape == (len(images), 3, 224, 224)
    difference = (ours - reference).abs()
    std = min(processor.image_processor.image_std)
    assert difference.max().item() <= 2 / 255 / std + 1e-6
    assert difference.mean().item() <= 1e-4


# -- scores and logits -------------------------------------------------------------------


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_logits_and_scores_match_transformers_on_real_photos(
    family, clip_classifier, siglip_classifier, tiny_clip, tiny_siglip
):
    from transformers import AutoModelForZeroShotImageClassification, AutoProcessor, pipeline

    folder = tiny_clip if family == "clip" else tiny_siglip
    classifier = clip_classifier if family == "clip" else siglip_classifier
    # one text per label, so transformers' pipeline (one text per candidate) is the reference
    texts = {
        "clip": ["a photo of a cat", "a cup of coffee", "a space rocket", "an astronaut"],
        "siglip": [f"a photo of {label}." for label in SIGLIP_LABELS],
    }[family]
    if family == "clip":
        prompts = dict(zip(SIGLIP_LABELS, [[text] for text in texts], strict=True))
        classifier = Classifier.load(ModelConfig(id=str(folder), device="cpu", prompts=prompts))
    images = [photo(name) for name in PHOTOS]

    # when labelcast scores real photos
    ours = classifier.classify(images)
    logits = classifier.logits(images)

    # then its logits are the model's logits_per_image on the processor's inputs
    model = AutoModelForZeroShotImageClassification.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    padding: dict[str, Any] = (
        {"padding": "max_length", "max_length": 64} if family == "siglip" else {"padding": True}
    )
    inputs = processor(text=texts, images=_pil(images), return_tensors="pt", **padding)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.numpy()
        same_pixels = classifier.forward(inputs["pixel_values"]).numpy()
    # (exactly so on the processor's own pixel values: what is left is preprocessing's)
    assert np.abs(same_pixels - expected).max() <= 1e-4
    assert np.abs(logits - expected).max() <= LOGITS_TOLERANCE
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all()
    # and its scores are the zero-shot pipeline's: softmax for CLIP, sigmoid for SigLIP
    classify = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    for row, image in zip(ours, _pil(images), strict=True):
        answers = classify(image, candidate_labels=texts, hypothesis_template="{}")
        theirs = {answer["label"]: answer["score"] for answer in answers}
        assert np.abs(row - [theirs[text] for text in texts]).max() <= SCORES_TOLERANCE
    assert classifier.info.scoring == {"clip": "softmax", "siglip": "sigmoid"}[family]
    if family == "clip":
        np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_several_texts_of_a_label_are_averaged_in_embedding_space(clip_classifier, tiny_clip):
    from transformers import AutoModelForZeroShotImageClassification, AutoTokenizer

    # given labels described by two texts each, and the model's own towers
    model = AutoModelForZeroShotImageClassification.from_pretrained(tiny_clip).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip)
    processor_images = clip_classifier.preprocess([photo("chelsea"), photo("rocket")])

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        image = unit(model.get_image_features(pixel_values=processor_images).pooler_output)
        labels = []
        for texts in CLIP_PROMPTS.values():
            tokens = tokenizer(texts, padding=True, return_tensors="pt")
            text = unit(model.get_text_features(**tokens).pooler_output)
            labels.append(unit(text.mean(dim=0)))
        expected = (image @ torch.stack(labels).T * model.logit_scale.exp()).numpy()
    # when labelcast classifies the same frames
    logits = clip_classifier.logits([photo("chelsea"), photo("rocket")])
    # then each label's logit is the cosine with its texts' mean unit embedding, renormalised
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert clip_classifier.id2label == dict(enumerate(CLIP_PROMPTS))


# -- a run, a reload ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zero-shot-clip")
    return make_clip(folder / "short.mp4", seconds=2, fps=10, photos=("chelsea", "rocket"))


def test_a_run_labels_a_clip_with_the_prompt_labels(tiny_siglip, short_clip, tmp_path):
    # given a SigLIP checkpoint, a plain list of labels with a template, a short clip
    # sampled at 2 fps and a log sink
    out = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        {
            "name": "doorstep",
            "model": {
                "id": str(tiny_siglip),
                "device": "cpu",
                "prompts": SIGLIP_LABELS,
                "prompt_template": "a photo of {}.",
            },
            "sources": [{"id": "door", "type": "file", "path": str(short_clip)}],
            "labels": {"top_k": 4, "min_score": 0.0},
            "sinks": [{"type": "log", "path": str(out)}],
        },
    )
    # when the pipeline runs it to the end
    Pipeline(load_config(config)).run()
    # then each sampled frame has an event whose labels are the prompts' labels, each
    # scored by its own sigmoid (the scores need not add up to 1)
    events = read_events(out)
    assert len(events) == 4
    for event in events:
        assert event["model"]["scoring"] == "sigmoid"
        assert {label["label"] for label in event["labels"]} == set(SIGLIP_LABELS)
        for label in event["labels"]:
            assert label["label"] == SIGLIP_LABELS[label["class_id"]]
    # and the slideshow's two photos score differently
    assert events[0]["labels"] != events[-1]["labels"]


def test_changed_prompts_reload_the_model_and_events_carry_the_new_labels(tiny_clip, tmp_path):
    # given a pipeline running a CLIP checkpoint on a clip played in real time
    clip = make_clip(tmp_path / "live.mp4", seconds=3, fps=10)
    config = {
        "name": "reload",
        "model": {"id": str(tiny_clip), "device": "cpu", "prompts": ["cat", "rocket"]},
        "sources": [{"id": "door", "type": "file", "path": str(clip), "realtime": True}],
        "labels": {"min_score": 0.0},
        "sinks": [],
    }
    events: list[LabelEvent] = []
    pipeline = Pipeline(load_config(write_config(tmp_path, config)), on_event=events.append)
    pipeline.start()
    try:
        deadline = time.monotonic() + 20
        while not events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert events
        # when the prompts change
        config["model"]["prompts"] = {"parcel": ["a parcel"], "empty": ["an empty doorstep"]}
        result = pipeline.reconfigure(load_config(write_config(tmp_path, config)))
        assert pipeline.wait(30)
    finally:
        pipeline.abort()
        pipeline.wait(10)
    # then the model (and with it the text side) was loaded again
    assert result.model_reloaded
    assert pipeline.classifier is not None
    assert pipeline.classifier.id2label == {0: "parcel", 1: "empty"}
    # and events name the old labels up to the reload, the new ones after it
    kinds = ["new" if e.labels[0].label in ("parcel", "empty") else "old" for e in events]
    old = [e for e, kind in zip(events, kinds, strict=True) if kind == "old"]
    assert all({label.label for label in e.labels} <= {"cat", "rocket"} for e in old)
    assert kinds == sorted(kinds, reverse=True) and "new" in kinds and "old" in kinds
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_prompt_changes_are_model_changes_for_the_reload_plan():
    from labelcast.pipeline.reload import model_changed

    old = ModelConfig(id="m", prompts=["cat", "dog"])
    assert model_changed(old, old.model_copy(update={"prompts": ["cat", "fox"]}))
    assert model_changed(old, old.model_copy(update={"prompt_template": "a {} photo"}))
    assert not model_changed(old, ModelConfig(id="m", prompts=["cat", "dog"]))


# -- bad prompts are config errors -------------------------------------------------------

BAD_PROMPTS = {
    "empty label": ({"prompts": ["cat", " "]}, "model.prompts: a label is empty"),
    "duplicate label": (
        {"prompts": ["cat", "Cat "]},
        "model.prompts: duplicate label 'Cat ' (the same as 'cat'",
    ),
    "duplicate label, mapping": (
        {"prompts": {"cat": ["a cat"], "CAT": ["a kitten"]}},
        "model.prompts: duplicate label 'CAT'",
    ),
    "no texts": ({"prompts": {"cat": [], "dog": ["a dog"]}}, "label 'cat': its list of texts"),
    "one text two labels": (
        {"prompts": {"cat": ["a pet"], "dog": ["A pet"]}},
        "the text 'A pet' describes both 'cat' and 'dog'",
    ),
    "template without {}": (
        {"prompts": ["cat", "dog"], "prompt_template": "a photo"},
        "model.prompt_template: 'a photo' must contain {} exactly once",
    ),
    "template with a mapping": (
        {"prompts": {"cat": ["a cat"]}, "prompt_template": "a {}"},
        "model.prompt_template applies to a plain list of labels",
    ),
}


def _config_with(tmp_path: Path, model: dict[str, Any], source: str = "unused.mp4") -> Path:
    return write_config(
        tmp_path, {"model": model, "sources": [{"id": "a", "type": "file", "path": source}]}
    )


def _errors(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if " ERROR " in line]


@pytest.mark.parametrize("case", ["empty label", "duplicate label"])
def test_bad_prompts_are_one_clear_config_error_of_the_cli(case, tmp_path):
    # given a config with an empty or a duplicate label
    keys, message = BAD_PROMPTS[case]
    config = _config_with(tmp_path, {"id": "unused", **keys})
    # when it is checked, then it exits 2 with one error naming the file and the field
    result = run_cli("check", str(config), timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (error,) = _errors(result)
    assert error.endswith(f"{config}: {message}" + error.partition(message)[2])


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompts_are_refused_when_the_config_is_read(case, tmp_path):
    # given a config whose prompts are wrong, when it is read (as every command reads it)
    keys, message = BAD_PROMPTS[case]
    with pytest.raises(ConfigError) as error:
        load_config(_config_with(tmp_path, {"id": "unused", **keys}))
    # then one message names the file and the field
    assert str(error.value).startswith(f"{_config_with(tmp_path, {})}: model")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_zero_shot_checkpoint_without_prompts_is_a_config_error_of_the_cli(
    tiny_clip, tmp_path, short_clip
):
    # given a CLIP checkpoint and no model.prompts
    config = _config_with(tmp_path, {"id": str(tiny_clip), "device": "cpu"}, str(short_clip))
    # when it is checked, then one error names model.prompts and says what it needs
    result = run_cli("check", str(config), timeout=60)
    assert result.returncode == 2, result.stderr
    (error,) = _errors(result)
    assert (
        f"model.prompts: model {str(tiny_clip)!r} is a zero-shot CLIP checkpoint with no labels "
        "of its own; list the labels (and the texts that describe them) in model.prompts"
    ) in error


@pytest.mark.parametrize(
    ("checkpoint", "prompts", "message"),
    [
        (
            "beit",
            ["cat", "dog"],
            "model.prompts: model {id!r} (model_type beit) is not a zero-shot",
        ),
        ("clip", ["cat"], "model.prompts: CLIP scores with a softmax over the labels"),
    ],
)
def test_prompts_that_do_not_fit_the_checkpoint_are_a_config_error(
    checkpoint, prompts, message, tiny_model, tiny_clip
):
    # given prompts on an image classifier, or one label for a softmax
    model_id = str(tiny_model if checkpoint == "beit" else tiny_clip)
    # when the model loads, then a ConfigError names model.prompts and says what is wrong
    with pytest.raises(ConfigError) as error:
        Classifier.load(ModelConfig(id=model_id, device="cpu", prompts=prompts))
    assert message.format(id=model_id) in str(error.value)


def test_zero_shot_checkpoints_are_refused_by_triton(tiny_clip):
    with pytest.raises(ValidationError, match="runs on backend torch or onnxruntime"):
        ModelConfig(id=str(tiny_clip), prompts=["a", "b"], backend="triton")
    with pytest.raises(ConfigError, match=r"zero-shot CLIP checkpoint: run it with model\.backend"):
        Classifier.load(ModelConfig(id=str(tiny_clip), backend="triton"))


# -- ONNX, verify, model-info ------------------------------------------------------------


def test_onnx_runs_the_image_tower_and_matches_torch(
    tiny_clip, tiny_siglip, clip_classifier, siglip_classifier, tmp_path, monkeypatch
):
    require_onnx()
    monkeypatch.setenv("LABELCAST_CACHE", str(tmp_path / "cache"))
    images = _photos()
    for reference in (clip_classifier, siglip_classifier):
        # given a zero-shot checkpoint on backend onnxruntime (exported on first load)
        prompts = CLIP_PROMPTS if reference is clip_classifier else SIGLIP_LABELS
        config = ModelConfig(
            id=reference.info.id, device="cpu", prompts=prompts, backend="onnxruntime"
        )
        onnx = Classifier.load(config)
        # when it classifies the photos the torch model classifies
        # then the ONNX image tower with the prompts' head gives torch's logits and scores
        np.testing.assert_allclose(onnx.logits(images), reference.logits(images), atol=1e-4)
        np.testing.assert_allclose(onnx.classify(images), reference.classify(images), atol=1e-5)
        assert (onnx.info.backend, onnx.info.scoring) == ("onnxruntime", reference.info.scoring)
    # and other prompts reuse the cached image tower: one file per checkpoint
    Classifier.load(ModelConfig(id=str(tiny_clip), prompts=["x", "y"], backend="onnxruntime"))
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def test_export_writes_the_image_tower_and_checks_it(tiny_clip, tmp_path):
    require_onnx()
    from labelcast.commands.export import export

    # given a CLIP config, when labelcast export writes it (int8 too)
    config = ModelConfig(id=str(tiny_clip), prompts=CLIP_PROMPTS)
    result = export(config, tmp_path / "clip.onnx")
    # then the file maps pixel values to image embeddings and agrees with torch
    assert result["output"] == {"name": "image_embeds", "shape": ["batch", 16]}
    assert result["check"]["max_abs_logit_diff"] < 1e-3
    assert result["check"]["top1_agreement_pct"] == 100
    # and a pipeline can run it from model.onnx.path
    onnx = Classifier.load(
        ModelConfig(
            id=str(tiny_clip),
            prompts=CLIP_PROMPTS,
            backend="onnxruntime",
            onnx={"path": str(tmp_path / "clip.onnx")},
        )
    )
    assert onnx.classify([photo("coffee")]).shape == (1, len(CLIP_PROMPTS))


def require_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    require("onnxruntime", not missing, f"pip install 'labelcast[onnx]' ({missing})")


def test_verify_scores_folders_named_by_the_prompt_labels(tiny_siglip, tmp_path):
    from PIL import Image

    from labelcast.commands.verify import VerifyThresholds, format_report, load_images, verify

    # given folders named by the prompt labels, holding photos of each
    folder = tmp_path / "images"
    for label, name in (("cat", "chelsea"), ("coffee", "coffee"), ("rocket", "rocket")):
        (folder / label).mkdir(parents=True)
        Image.fromarray(photo(name, (120, 160))).save(folder / label / f"{name}.png")
    model = {"id": str(tiny_siglip), "device": "cpu", "precision": "int8"}
    config = load_config(_config_with(tmp_path, {**model, "prompts": SIGLIP_LABELS}))
    # when verify runs on them (as labelcast verify --images does)
    images, problems = load_images(folder, VerifyThresholds())
    report = verify(config, images, VerifyThresholds())
    # then it scores the three labelled images against the prompts' labels, and compares
    # int8 with fp32 by their sigmoid scores
    assert not problems
    assert report["accuracy"]["images"] == 3
    assert report["model"]["scoring"] == "sigmoid" and report["model"]["precision"] == "int8"
    assert 0 <= report["agreement"]["max_abs_score_diff"] < 0.1
    assert "accuracy on 3 labelled images" in format_report(report)
    # and a folder named after no label is refused before any image is classified
    (folder / "dog").mkdir()
    Image.fromarray(photo("astronaut", (64, 64))).save(folder / "dog" / "a.png")
    images, _ = load_images(folder, VerifyThresholds())
    with pytest.raises(ConfigError, match=r"folder names \['dog'\] are not labels"):
        verify(config, images, VerifyThresholds())


def test_model_info_says_a_checkpoint_is_zero_shot(tiny_siglip):
    from labelcast.commands.model_info import format_model_info, model_info

    info = model_info(str(tiny_siglip))
    assert (info["kind"], info["family"], info["scoring"]) == ("zero-shot", "SigLIP", "sigmoid")
    assert info["num_labels"] == 0 and info["safetensors"] is True
    assert "spiece.model" in {f["name"] for f in info["files"]}
    text = format_model_info(info)
    assert "zero-shot (SigLIP; scores: sigmoid)" in text and "set by model.prompts" in text


@pytest.mark.gpu
def test_fp16_on_cuda_agrees_with_fp32(tiny_clip, tiny_siglip):
    require("cuda", torch.cuda.is_available(), "no CUDA device (this test is marked gpu)")
    images = _photos()
    for folder, prompts in ((tiny_clip, CLIP_PROMPTS), (tiny_siglip, SIGLIP_LABELS)):
        config = ModelConfig(id=str(folder), device="cuda", prompts=prompts)
        fp16 = Classifier.load(config)
        fp32 = Classifier.load(config, precision="fp32")
        assert fp16.info.precision == "fp16"
        scores = fp16.submit(images).result()
        assert np.abs(scores - fp32.classify(images)).max() < 0.02
        assert (scores.argmax(axis=1) == fp32.classify(images).argmax(axis=1)).all()
