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
