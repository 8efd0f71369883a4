"""configs/course_wav2vec2_base.yaml, offline: the course's recipe on a stand-in for facebook/wav2vec2-base.

The stand-in is a tiny random wav2vec2 saved in the hub checkpoint's layout (``config.json`` of a
``Wav2Vec2ForPreTraining`` without a CTC head, ``model.safetensors``, ``preprocessor_config.json`` without
attention masks as for the group-norm base model, ``vocab.json`` with the upper-case 32-symbol character
vocabulary, ``tokenizer_config.json``, ``special_tokens_map.json``). The data is a LibriSpeech tree made
from the synthetic corpus and prepared with ``asr-ctc-prepare librispeech``. Only the model path, the data
paths, the step counts and (no GPU here) fp16 are overridden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Processor,
)

from asr_ctc.config import load_config
from asr_ctc.finetune import run_finetune
from asr_ctc.inference import run_inference
from asr_ctc.prepare import prepare_librispeech, write_shards

REPO = Path(__file__).resolve().parents[1]
COURSE_CONFIG = REPO / "configs" / "course_wav2vec2_base.yaml"
# wav2vec2-base's vocabulary: the 4 specials, the word delimiter, then LibriSpeech's letters by frequency.
BASE_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


def make_wav2vec2_base_standin(path: Path) -> Path:
    """A tiny random checkpoint in the layout of the hub's facebook/wav2vec2-base (see module doc)."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 4, 4),
        conv_stride=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",  # as the base model (its processor gives no attention mask)
        do_stable_layer_norm=False,
        vocab_size=len(BASE_VOCAB),
        architectures=["Wav2Vec2ForPreTraining"],
        codevector_dim=16,
        proj_codevector_dim=16,
        num_codevectors_per_group=8,
    )
    Wav2Vec2ForPreTraining(config).save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(BASE_VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(path / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def _course_overrides(tmp: Path, ckpt: Path, manifests: dict[str, Path]) -> list[str]:
    """The only changes to the course config: model and data paths, step counts, no fp16 (no GPU)."""
    return [
        f"output_dir={tmp / 'run'}",
        f"model.name_or_path={ckpt}",
        "data.train.shards=null",  # the config trains on shards; test_course_recipe_on_shards makes some
        f"data.train.manifest={manifests['train-clean-100']}",
        f"data.eval.manifest={manifests['dev-clean']}",
        f"data.test.manifest={manifests['test-clean']}",
        "data.min_duration_s=0.2",  # the synthetic utterances are short
        "training.max_steps=2",
        "training.eval_steps=2",
        "training.save_steps=2",
        "training.logging_steps=1",
        "training.dataloader_num_workers=0",
        "training.fp16=false",  # no GPU here: fp16 is CUDA mixed precision
        "training.use_cpu=true",
    ]


@pytest.fixture(scope="module")
def course_run(librispeech_tree, tmp_path_factory):
    root, made = librispeech_tree
    tmp = tmp_path_factory.mktemp("course")
    ckpt = make_wav2vec2_base_standin(tmp / "wav2vec2-base")
    m = prepare_librispeech(root, tmp / "librispeech")
    overrides = _course_overrides(tmp, ckpt, m)
    cfg = load_config(COURSE_CONFIG, overrides)
    return cfg, run_finetune(cfg), ckpt, made


def test_course_config_holds_the_course_hyper_parameters():
    cfg = load_config(COURSE_CONFIG, check_files=False)
    t = cfg.training
    assert cfg.model.name_or_path == "facebook/wav2vec2-base" and cfg.data.lowercase is False
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (40, 2)
    assert (t["learning_rate"], t["warmup_steps"], t["fp16"], t["gradient_checkpointing"]) == (
        1e-4,
        1000,
        True,
        True,
    )
    assert t["metric_for_best_model"] == "wer" and t["greater_is_better"] is False


def test_fp16_on_a_cpu_is_float32():
    """What the config's comment says: without a GPU, fp16 is recorded but neither autocast nor a gradient
    scaler is enabled (accelerate), so a CPU run computes in float32."""
    from transformers import Trainer, TrainingArguments

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is real mixed precision there")
    args = TrainingArguments(output_dir="unused", fp16=True, report_to="none")
    trainer = Trainer(model=torch.nn.Linear(4, 4), args=args)
    assert trainer.accelerator.native_amp is False and trainer.accelerator.scaler is None
    with trainer.accelerator.autocast():
        assert trainer.model(torch.randn(2, 4)).dtype == torch.float32


def test_course_recipe_two_steps_then_inference(course_run, tmp_path):
    cfg, result, ckpt, made = course_run
    out = result.output_dir
    # The checkpoint's own processor: its 32-symbol upper-case vocabulary, a 32-output CTC head.
    assert json.loads((out / "vocab.json").read_text()) == json.loads((ckpt / "vocab.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert saved["vocab_size"] == 32 and saved["architectures"] == ["Wav2Vec2ForCTC"]
    history = json.loads((out / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2]
    assert any("eval_wer" in e for e in history)  # the WER eval ran
    assert (out / "checkpoint-2").is_dir()
    # Inference from the run directory with the config saved in it.
    summary = run_inference(out, split="test", batch_size=8, device="cpu").summary
    assert summary["num_utterances"] == len(made["test-clean"])
    rows = (out / "inference_test" / "transcripts.tsv").read_text().splitlines()[1:]
    references = [r.split("\t")[1] for r in rows]
    assert all(ref == ref.upper() and ref for ref in references)  # upper case kept (lowercase: false)


def test_course_recipe_on_shards(librispeech_tree, tmp_path):
    """The course's own layout: training data from WebDataset shards written by asr-ctc-prepare."""
    root, made = librispeech_tree
    ckpt = make_wav2vec2_base_standin(tmp_path / "wav2vec2-base")
    m = prepare_librispeech(root, tmp_path / "librispeech")
    shards = write_shards(m["train-clean-100"], tmp_path / "shards", max_size_mb=None, max_utterances=8)
    assert len(shards.shards) > 1
    overrides = [
        *_course_overrides(tmp_path, ckpt, m),
        "data.train.manifest=null",
        f"data.train.shards={shards.pattern}",
    ]
    result = run_finetune(load_config(COURSE_CONFIG, overrides))
    history = json.loads((result.output_dir / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2]
    summary = run_inference(result.output_dir, split="test", batch_size=8, device="cpu").summary
    assert summary["num_utterances"] == len(made["test-clean"])
