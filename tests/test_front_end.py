"""The time-major front end (asr_ctc.front_end) against the stock convolutions and feature encoders."""

from __future__ import annotations

import pytest
import torch
from helpers import NO_RANDOMNESS
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from asr_ctc.config import ModelConfig
from asr_ctc.front_end import (
    TimeMajorFeatureEncoder,
    conv_time_major,
    supports_time_major,
    use_time_major_front_end,
)
from asr_ctc.modeling import build_model


@pytest.mark.parametrize(
    ("channels", "out", "k", "s", "length", "bias", "dtype"),
    [
        (1, 32, 10, 10, 16003, False, torch.float32),  # the demo's first layer, a ragged tail
        (1, 8, 10, 5, 4001, True, torch.float64),  # wav2vec2-base's first layer
        (32, 64, 3, 3, 531, True, torch.float32),
        (64, 128, 3, 2, 532, False, torch.float32),
        (5, 7, 3, 2, 3, True, torch.float64),  # one output frame
        (3, 5, 7, 2, 40, True, torch.float64),  # four blocks of taps
        (4, 6, 2, 3, 31, False, torch.float64),  # kernel < stride: samples skipped
        (128, 128, 2, 2, 77, True, torch.float32),
    ],
)
def test_conv_time_major_matches_conv1d_outputs_and_gradients(channels, out, k, s, length, bias, dtype):
    torch.manual_seed(0)
    conv = nn.Conv1d(channels, out, k, stride=s, bias=bias).to(dtype)
    x = torch.randn(3, channels, length, dtype=dtype, requires_grad=True)
    y_ref = conv(x)
    y = conv_time_major(x.transpose(1, 2).contiguous(), conv)
    assert y.is_contiguous()
    assert y.shape == (3, y_ref.shape[2], out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y.transpose(1, 2), y_ref, atol=tol, rtol=tol)
    w = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [x, *conv.parameters()])
    grads = torch.autograd.grad((y.transpose(1, 2) * w).sum(), [x, *conv.parameters()])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=tol * 100, rtol=tol)


class _ConvParams:
    """What conv_time_major reads of an ``nn.Conv1d``, with the weight and bias as plain (checked) tensors."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> None:
        self.weight, self.bias = weight, bias
        self.out_channels, self.kernel_size, self.stride = weight.shape[0], (weight.shape[2],), (stride,)


@pytest.mark.parametrize(("k", "s"), [(3, 2), (4, 4), (5, 2)])
def test_conv_time_major_gradcheck(k, s):
    torch.manual_seed(0)
    x = torch.randn(2, 19, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv_time_major(x, _ConvParams(w, b, s)), (x, w, b))


def _encoder_pair(**arch):
    """A stock wav2vec2 (from a plain config) and the same weights with the time-major front end."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=12,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        # Training mode (the front end's own code path) without randomness: no dropout, no SpecAugment.
        **NO_RANDOMNESS,
        **arch,
    )
    stock = Wav2Vec2ForCTC(config).double().train()
    fast = Wav2Vec2ForCTC(config).double().train()
    fast.load_state_dict(stock.state_dict())
    assert use_time_major_front_end(fast)
    return stock, fast


@pytest.mark.parametrize(
    "arch",
    [
        {},  # wav2vec2-base's: a GroupNorm first layer, kernels 10, 3, 3, 3, 3, 2, 2, strides 5, 2, ...
        {"feat_extract_norm": "layer", "conv_bias": True},  # wav2vec2-large-lv60's
        {
            "conv_dim": (8, 16, 16),
            "conv_kernel": (10, 3, 2),
            "conv_stride": (10, 3, 2),
            "num_feat_extract_layers": 3,
        },
    ],
)
def test_time_major_encoder_matches_the_stock_model(arch):
    arch = {"conv_dim": (8,) * 7, **arch}
    stock, fast = _encoder_pair(**arch)
    x = torch.randn(3, 4003, dtype=torch.float64)
    mask = torch.ones(3, 4003, dtype=torch.long)
    mask[1, 3000:] = 0
    ref = stock(x, attention_mask=mask).logits
    out = fast(x, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    w = torch.randn_like(ref)
    grads_ref = torch.autograd.grad((ref * w).sum(), list(stock.parameters()))
    grads = torch.autograd.grad((out * w).sum(), list(fast.parameters()))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-9, rtol=1e-9)


def test_build_model_uses_it_and_saves_a_plain_checkpoint(tmp_path):
    torch.manual_seed(0)
    fast = build_model(ModelConfig(), vocab_size=30, pad_token_id=0).eval()
    assert isinstance(fast.wav2vec2.feature_extractor, TimeMajorFeatureEncoder)
    fast.save_pretrained(tmp_path)
    plain = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()  # a plain checkpoint: the stock encoder
    assert not isinstance(plain.wav2vec2.feature_extractor, TimeMajorFeatureEncoder)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 8000)
    torch.testing.assert_close(fast(x).logits, plain(x).logits, atol=1e-5, rtol=1e-5)
    assert use_time_major_front_end(plain)
    assert not use_time_major_front_end(plain)  # already swapped
    torch.testing.assert_close(plain(x).logits, fast(x).logits, atol=1e-5, rtol=1e-5)


def test_freezing_and_gradient_checkpointing_still_work():
    stock, fast = _encoder_pair(conv_dim=(8,) * 7)
    x = torch.randn(2, 4000, dtype=torch.float64)
    fast.activation_checkpointing_enable()
    stock.activation_checkpointing_enable()
    torch.testing.assert_close(fast(x).logits, stock(x).logits)
    fast.freeze_feature_encoder()
    encoder = fast.wav2vec2.feature_extractor
    assert not encoder._requires_grad
    assert not any(p.requires_grad for p in encoder.parameters())
    fast(x).logits.sum().backward()
    assert all(p.grad is None for p in encoder.parameters())


def test_too_short_input_fails_like_the_convolution():
    _, fast = _encoder_pair(conv_dim=(8,) * 7)
    with pytest.raises(RuntimeError, match="[Kk]ernel size"):
        fast(torch.randn(1, 300, dtype=torch.float64))


def test_unsupported_encoders_are_left_alone():
    model = nn.Sequential(nn.Conv1d(1, 4, 10, stride=5))
    assert not use_time_major_front_end(model)
    _, fast = _encoder_pair(conv_dim=(8,) * 7)
    fast.wav2vec2.feature_extractor.conv_layers[2].conv.padding = (1,)
    assert not supports_time_major(fast.wav2vec2.feature_extractor)
    with pytest.raises(ValueError, match="encoder"):
        TimeMajorFeatureEncoder(nn.Linear(2, 2))
