"""The output-directory rules: what --resume compares, restarting a run that died early, --overwrite, logs."""

from __future__ import annotations

import json
import logging
import os

import pytest
import yaml
from helpers import tiny_run_config

from asr_ctc.config import ConfigError, config_from_dict, to_dict
from asr_ctc.finetune import RUN_CONFIG, OutputDirError, check_output_dir, run_finetune


def _cfg(corpus, out, model=None, **training):
    raw = tiny_run_config(corpus, out, **training)
    raw["model"].update(model or {})
    return config_from_dict(raw)


def _fake_run(cfg, checkpoint_step=None, finished=False):
    out = os.fspath(cfg.output_dir)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RUN_CONFIG), "w") as f:
        f.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if checkpoint_step is not None:
        ckpt = os.path.join(out, f"checkpoint-{checkpoint_step}")
        os.makedirs(ckpt)
        with open(os.path.join(ckpt, "trainer_state.json"), "w") as f:
            json.dump({"global_step": checkpoint_step}, f)
    if finished:
        with open(os.path.join(out, "train_metrics.json"), "w") as f:
            f.write("{}")


def test_resume_ignores_keys_that_do_not_change_the_math(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = _cfg(tiny_corpus, "run")  # output_dir written relative to the working directory
    _fake_run(saved, checkpoint_step=10)
    resumed = _cfg(
        tiny_corpus,
        tmp_path / "run",  # the same directory, spelt as an absolute path
        dataloader_num_workers=2,
        logging_steps=5,
        eval_steps=3,
        save_steps=7,
        max_steps=99,
        per_device_eval_batch_size=2,
        report_to="none",
        disable_tqdm=False,
    )
    assert check_output_dir(resumed, resume=True, overwrite=False) == str(tmp_path / "run" / "checkpoint-10")


def test_resume_lists_every_difference_that_changes_the_math(tiny_corpus, tmp_path):
    saved = _cfg(tiny_corpus, tmp_path / "run")
    _fake_run(saved, checkpoint_step=10)
    changed = _cfg(tiny_corpus, tmp_path / "run", model={"hidden_dropout": 0.3}, learning_rate=1e-3, seed=0)
    changed.loss.reduction = "sum"
    changed.data.max_duration_s = 5.0
    with pytest.raises(OutputDirError) as err:
        check_output_dir(changed, resume=True, overwrite=False)
    msg = str(err.value)
    assert "training.learning_rate: 0.003 -> 0.001" in msg
    assert "model.hidden_dropout: 0.0 -> 0.3" in msg
    assert "loss.reduction: 'mean' -> 'sum'" in msg
    assert "data.max_duration_s: 20.0 -> 5.0" in msg
    assert "seed" not in msg  # unchanged (0 both times)
    # A key that the saved run left at its default and the new one sets to the same value is no change.
    same = _cfg(tiny_corpus, tmp_path / "run", weight_decay=0.0)
    assert check_output_dir(same, resume=True, overwrite=False).endswith("checkpoint-10")


def test_a_run_that_died_before_its_first_checkpoint_can_be_started_again(tiny_corpus, tmp_path, caplog):
    cfg = _cfg(tiny_corpus, tmp_path / "run")
    _fake_run(cfg)
    (tmp_path / "run" / "checkpoint-10").mkdir()  # killed while saving: no trainer_state.json
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        assert check_output_dir(cfg, resume=False, overwrite=False) is None
        assert check_output_dir(cfg, resume=True, overwrite=False) is None
    assert "stopped before its first checkpoint" in caplog.text
    other = _cfg(tiny_corpus, tmp_path / "run", learning_rate=1e-3)
    expected = r"different config \(differs in: training.learning_rate: 0.003 -> 0.001\); pass --overwrite"
    with pytest.raises(OutputDirError, match=expected):
        check_output_dir(other, resume=False, overwrite=False)
    # A finished run that saved no checkpoint is a run, not a crash: it is not silently redone.
    done = _cfg(tiny_corpus, tmp_path / "done")
    _fake_run(done, finished=True)
    with pytest.raises(OutputDirError, match="already holds a run"):
        check_output_dir(done, resume=False, overwrite=False)
    with pytest.raises(OutputDirError, match="saved no checkpoint"):
        check_output_dir(done, resume=True, overwrite=False)


def test_overwrite_says_what_it_deletes(tiny_corpus, tmp_path, caplog):
    cfg = _cfg(tiny_corpus, tmp_path / "run")
    _fake_run(cfg, checkpoint_step=10)
    with caplog.at_level(logging.WARNING, logger="asr_ctc"):
        assert check_output_dir(cfg, resume=False, overwrite=True) is None
    assert not (tmp_path / "run").exists()
    assert f"deleting {tmp_path / 'run'}" in caplog.text and "2 files" in caplog.text
    assert "checkpoint-10" in caplog.text


def test_a_failed_start_does_not_block_the_same_command(tiny_corpus, tmp_path, monkeypatch, caplog):
    """End to end: training dies before its first checkpoint; the same command then runs (issue 11)."""
    from asr_ctc import trainer as trainer_mod

    cfg = _cfg(tiny_corpus, tmp_path / "run", max_steps=2, eval_steps=2, save_steps=2)

    def die(self, *a, **k):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(trainer_mod.CTCTrainer, "train", die)
    with pytest.raises(RuntimeError, match="simulated"):
        run_finetune(cfg)
    assert (tmp_path / "run" / RUN_CONFIG).exists()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="asr_ctc"):
        result = run_finetune(cfg)
    assert "eval_wer" in result.metrics
    # Routine summaries are INFO; nothing in a clean run is a WARNING from this project.
    kept = [r for r in caplog.records if "kept" in r.getMessage()]
    assert kept and all(r.levelno == logging.INFO for r in kept)
    assert not [
        r
        for r in caplog.records
        if r.name.startswith("asr_ctc")
        and r.levelno >= logging.WARNING
        and "stopped before its first checkpoint" not in r.getMessage()
    ]


def test_report_to_tensorboard_without_it_fails_before_anything_is_written(
    tiny_corpus, tmp_path, monkeypatch
):
    import importlib.util

    from asr_ctc import config as config_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(
        config_mod.importlib.util,
        "find_spec",
        lambda n, *a: None if n.startswith("tensorboard") else real(n, *a),
    )
    cfg = _cfg(tiny_corpus, tmp_path / "run", report_to="tensorboard")
    with pytest.raises(ConfigError, match="tensorboard"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_the_cli_shows_this_projects_info_messages():
    from asr_ctc.cli import _setup_logging

    logger = logging.getLogger("asr_ctc")
    before = logger.level
    try:
        _setup_logging()
        assert logging.getLogger("asr_ctc.finetune").isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)


def _offline(monkeypatch, endpoint=None):
    """The hub as this process sees it: offline (HF_HUB_OFFLINE) or, with ``endpoint``, not offline but at
    an address nothing answers on; the cached probe is forgotten before and after."""
    import datasets
    from huggingface_hub import constants

    from asr_ctc.hub import hub_offline_reason

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", endpoint is None)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", endpoint is None)
    if endpoint is not None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(var, raising=False)
    hub_offline_reason.cache_clear()


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"])
def test_an_unreachable_hub_fails_at_once_with_one_error(
    tiny_corpus, tmp_path, monkeypatch, capsys, endpoint
):
    """A hub model offline: one error line naming the reason, in well under the ~30 s of retries (and
    none of their warnings)."""
    import time

    from asr_ctc.cli import finetune_main
    from asr_ctc.hub import hub_offline_reason

    _offline(monkeypatch, endpoint)
    config = tmp_path / "config.yaml"
    raw = tiny_run_config(tiny_corpus, tmp_path / "run")
    raw["model"]["name_or_path"] = "asr-ctc-tests/no-such-model"
    config.write_text(yaml.safe_dump(raw))
    start = time.perf_counter()
    try:
        assert finetune_main(["--config", str(config)]) == 2
    finally:
        hub_offline_reason.cache_clear()
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert seconds < 10 and "Retrying" not in err, (seconds, err)
    [line] = [x for x in err.splitlines() if x.strip()]
    reason = "HF_HUB_OFFLINE is set" if endpoint is None else f"{endpoint} cannot be reached"
    assert line.startswith("error: model.name_or_path: cannot load 'asr-ctc-tests/no-such-model'")
    assert reason in line and "no copy of it in the local cache" in line


def test_a_rerun_reports_the_configs_own_error_before_the_output_dir(tiny_corpus, tmp_path, monkeypatch):
    """An output directory holding a failed run (a different config, no checkpoint) and a config whose
    model cannot be loaded: the config's error comes first."""
    from asr_ctc.hub import hub_offline_reason
    from asr_ctc.modeling import CheckpointError

    _offline(monkeypatch)
    _fake_run(_cfg(tiny_corpus, tmp_path / "run", learning_rate=1e-3), checkpoint_step=10)
    cfg = _cfg(tiny_corpus, tmp_path / "run", model={"name_or_path": "asr-ctc-tests/no-such-model"})
    try:
        with pytest.raises(CheckpointError, match="model.name_or_path: cannot load"):
            run_finetune(cfg)
    finally:
        hub_offline_reason.cache_clear()
    with pytest.raises(OutputDirError, match="already holds a run"):  # the directory's rule still holds
        check_output_dir(cfg, resume=False, overwrite=False)


def test_a_run_saved_before_a_knob_existed_resumes_at_its_default(tiny_corpus, tmp_path):
    # A run_config.yaml written by an older version lacks the loss keys added since; it trained with their
    # defaults, so resuming with the defaults is exact, and a non-default value is a listed difference.
    saved = _cfg(tiny_corpus, tmp_path / "run")
    _fake_run(saved, checkpoint_step=10)
    path = tmp_path / "run" / RUN_CONFIG
    old = yaml.safe_load(path.read_text())
    old["loss"] = {k: old["loss"][k] for k in ("impl", "reduction", "zero_infinity")}
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    assert check_output_dir(saved, resume=True, overwrite=False).endswith("checkpoint-10")
    changed = _cfg(tiny_corpus, tmp_path / "run")
    changed.loss.focal_gamma = 2.0
    with pytest.raises(OutputDirError, match=r"loss.focal_gamma: 0.0 -> 2.0"):
        check_output_dir(changed, resume=True, overwrite=False)
