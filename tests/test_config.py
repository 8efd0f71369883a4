from pathlib import Path

import pytest

from asr_ctc.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_parse():
    for name in ("synthetic", "wav2vec2_base_librispeech", "local_manifest"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml", check_files=False)
        assert cfg.loss.impl == "custom"
        assert cfg.output_dir


def test_overrides_and_types(tmp_path):
    manifest = tmp_path / "train.tsv"
    manifest.write_text("id\taudio\ttext\n")
    p = _write(tmp_path, f"output_dir: {tmp_path / 'out'}\ndata:\n  train: {{manifest: {manifest}}}\n")
    cfg = load_config(
        p,
        [
            "training.max_steps=50",
            "loss.impl=torch",
            "model.architecture.hidden_size=64",
            "data.lowercase=false",
            "data.max_duration_s=3",
        ],
    )
    assert cfg.training == {"max_steps": 50}
    assert cfg.loss.impl == "torch"
    assert cfg.model.architecture.hidden_size == 64
    assert cfg.data.lowercase is False
    assert cfg.data.max_duration_s == 3.0 and isinstance(cfg.data.max_duration_s, float)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"output_dir": "x", "modle": {}}, r"unknown key modle; valid keys: output_dir, model, data, loss"),
        ({"output_dir": "x", "loss": {"impl": "fast"}}, r"loss.impl: expected one of custom, torch, builtin"),
        (
            {"output_dir": "x", "loss": {"reducton": "sum"}},
            r"unknown key loss.reducton; valid keys under loss",
        ),
        (
            {"output_dir": "x", "loss": {"zero_infinity": "yes"}},
            r"loss.zero_infinity: expected bool, got str",
        ),
        ({"output_dir": "x", "data": {"max_duration_s": "long"}}, r"data.max_duration_s: expected float"),
        ({"output_dir": "x", "training": {"max_stpes": 3}}, r"unknown key training.max_stpes"),
        (
            {"output_dir": "x", "model": {"architecture": {"conv_dim": 5}}},
            r"model.architecture.conv_dim: expected a list",
        ),
        ({"model": {}}, r"missing required key output_dir"),
        (
            {"output_dir": "x", "loss": {"impl": "builtin", "reduction": "token_mean"}},
            r"loss.reduction: token_mean",
        ),
    ],
)
def test_config_errors_name_the_key(raw, match):
    raw.setdefault("data", {}).setdefault("train", {"manifest": "nowhere.tsv"})
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw, check_files=False)


def test_missing_manifest_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train.manifest: file not found: .*nope.tsv"):
        config_from_dict({"output_dir": "x", "data": {"train": {"manifest": str(tmp_path / "nope.tsv")}}})


def test_missing_config_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="--config: file not found"):
        load_config(tmp_path / "missing.yaml")
    p = _write(tmp_path, "output_dir: x\ndata: {train: {manifest: a.tsv}}\n")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(p, ["training.max_steps"], check_files=False)


# -- issue 11 A: values as people write them -----------------------------------------------------------------

_BASE = "output_dir: out\ndata:\n  train: {manifest: a.tsv}\n"


def test_numbers_without_a_dot_and_words_that_yaml11_turns_into_bools(tmp_path):
    p = _write(
        tmp_path,
        _BASE
        + "model: {mask_time_prob: 5e-2}\n"
        + "training: {learning_rate: 3e-4, eval_strategy: no, weight_decay: 1e-2,\n"
        + "  save_steps: 10, max_steps: 1e3}\n",
    )
    with pytest.raises(ConfigError, match=r"training.max_steps: expected int, got float 1000.0"):
        load_config(p, check_files=False)
    cfg = load_config(p, ["training.max_steps=1000"], check_files=False)
    assert cfg.training == {
        "learning_rate": 3e-4,
        "eval_strategy": "no",
        "weight_decay": 0.01,
        "save_steps": 10,
        "max_steps": 1000,
    }
    assert isinstance(cfg.training["learning_rate"], float)
    assert isinstance(cfg.training["save_steps"], int) and isinstance(cfg.training["max_steps"], int)
    assert cfg.model.mask_time_prob == 0.05


def test_overrides_read_numbers_and_words_the_same_way(tmp_path):
    p = _write(tmp_path, _BASE)
    cfg = load_config(
        p,
        [
            "training.learning_rate=3e-4",
            "training.eval_strategy=no",
            "training.save_strategy=no",
            "training.warmup_steps=1e2",
            "training.run_name=2017",  # a str field keeps what was written
            "model.mask_time_prob=5e-2",
            "data.train.hub_split=off",
            "data.chars_to_drop=0123",
            "data.lowercase=False",
        ],
        check_files=False,
    )
    assert cfg.training["learning_rate"] == 3e-4 and cfg.training["warmup_steps"] == 100.0
    assert cfg.training["eval_strategy"] == "no" and cfg.training["save_strategy"] == "no"
    assert cfg.training["run_name"] == "2017"
    assert cfg.model.mask_time_prob == 0.05
    assert cfg.data.train.hub_split == "off" and cfg.data.chars_to_drop == "0123"
    assert cfg.data.lowercase is False
    # What the config loader reads, transformers accepts: no string learning rate reaches the optimiser.
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, **cfg.training)
    assert args.learning_rate == 3e-4 and args.eval_strategy == "no"
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)


def test_saved_config_reads_back_identically(tmp_path):
    import yaml

    from asr_ctc.config import load_yaml, to_dict

    p = _write(tmp_path, _BASE + "training: {learning_rate: 1e-5, eval_strategy: no, run_name: 'on'}\n")
    cfg = load_config(p, check_files=False)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    assert load_yaml(text) == to_dict(cfg)
    assert config_from_dict(load_yaml(text), check_files=False) == cfg
    assert "base_dir" not in to_dict(cfg)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("training.learning_rate=fast", r"training.learning_rate: expected float, got str 'fast'"),
        ("training.learning_rate='3e-4'", r"training.learning_rate: expected float, got str '3e-4'"),
        ("training.max_steps=1.5", r"training.max_steps: expected int, got float 1.5"),
        ("training.fp16=yes", r"training.fp16: expected bool, got str 'yes'"),
        ("training.eval_strategy=sometimes", r"training.eval_strategy: expected one of no, steps, epoch"),
        ("training.eval_steps=often", r"training.eval_steps: expected float, got str 'often'"),
        ("training.save_total_limit=[2]", r"training.save_total_limit: expected int, got list"),
        ("training.liger_kernel_config=7", r"liger_kernel_config: expected dict\[str, bool\], got int 7"),
        ("training.report_to={a: 1}", r"training.report_to: expected str or list\[str\], got dict"),
        ("data.lowercase=no", r"data.lowercase: expected bool, got str 'no'"),
        ("training=3", r"training: expected a mapping, got int 3"),
    ],
)
def test_every_training_value_is_checked_against_trainingarguments(tmp_path, override, match):
    p = _write(tmp_path, _BASE)
    with pytest.raises(ConfigError, match=match):
        load_config(p, [override], check_files=False)


def test_relative_manifest_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("id\taudio\ttext\n")
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    p = _write(cfg_dir, "output_dir: out\ndata: {train: {manifest: data/train.tsv}}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(p).data.train.manifest == "data/train.tsv"
    monkeypatch.chdir(cfg_dir)
    with pytest.raises(ConfigError, match="data.train.manifest: file not found: data/train.tsv"):
        load_config(p)


# -- issue 11 E: reporting integrations ---------------------------------------------------------------------


def test_report_to_a_missing_logger_is_a_config_error(monkeypatch):
    import importlib.util

    from asr_ctc import config as config_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(
        config_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name.lower().startswith("tensorboard") else real(name, *a),
    )
    for report_to in ("tensorboard", ["tensorboard"]):
        with pytest.raises(ConfigError, match=r"training.report_to: tensorboard needs .*\[tensorboard\]"):
            config_mod.check_reporting({"report_to": report_to})
    config_mod.check_reporting({"report_to": "none"})
    config_mod.check_reporting({})


# -- issue 12: loss options live on LossConfig --------------------------------------------------------------


def test_loss_config_validates_itself_and_documents_its_choices():
    import dataclasses

    from asr_ctc.config import LOSS_IMPLS, LossConfig

    fields = {f.name: f for f in dataclasses.fields(LossConfig)}
    assert fields["impl"].metadata["choices"] == LOSS_IMPLS
    assert all(f.metadata.get("help") for f in fields.values())
    with pytest.raises(ValueError, match="impl: expected one of custom, torch, builtin, reference, got 'w"):
        LossConfig(impl="warp")
    with pytest.raises(ValueError, match="reduction: expected one of mean, sum, token_mean"):
        LossConfig(reduction="avg")
    with pytest.raises(ValueError, match="reduction: token_mean needs impl custom"):
        LossConfig(impl="builtin", reduction="token_mean")
    assert LossConfig(impl="torch", reduction="token_mean").impl == "torch"
