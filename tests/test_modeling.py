"""PatchConv1d and use_patch_convs (build_model applies it): kernel == stride convolutions as matmuls."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Wav2Vec2ForCTC

from asr_ctc.config import ModelConfig
from asr_ctc.modeling import PatchConv1d, build_model, use_patch_convs


@pytest.mark.parametrize(
    ("channels", "out", "k", "length", "bias", "dtype"),
    [
        (1, 32, 10, 16003, False, torch.float32),
        (1, 8, 10, 10, True, torch.float64),
        (3, 5, 3, 100, True, torch.float64),
        (64, 128, 3, 531, False, torch.float32),
        (128, 128, 2, 77, True, torch.float32),
    ],
)
def test_patch_conv_matches_conv1d_outputs_and_gradients(channels, out, k, length, bias, dtype):
    torch.manual_seed(0)
    conv = nn.Conv1d(channels, out, k, stride=k, bias=bias).to(dtype)
    patch = PatchConv1d(channels, out, k, stride=k, bias=bias).to(dtype)
    patch.load_state_dict(conv.state_dict())
    x = torch.randn(4, channels, length, dtype=dtype, requires_grad=True)
    y_ref, y = conv(x), patch(x)
    assert y.shape == y_ref.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    w = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [x, *conv.parameters()])
    grads = torch.autograd.grad((y * w).sum(), [x, *patch.parameters()])
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=tol * 100, rtol=tol)


def test_patch_conv_gradcheck():
    torch.manual_seed(0)
    patch = PatchConv1d(2, 3, 4, stride=4).double()
    x = torch.randn(2, 2, 19, dtype=torch.float64, requires_grad=True)
    w = patch.weight.detach().clone().requires_grad_()
    b = patch.bias.detach().clone().requires_grad_()

    def run(x, w, b):  # the module's forward, with its parameters as checked inputs
        return torch.func.functional_call(patch, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(run, (x, w, b))


def test_too_short_input_fails_like_the_convolution():
    patch = PatchConv1d(1, 4, 10, stride=10)
    with pytest.raises(RuntimeError, match="[Kk]ernel size"):
        patch(torch.randn(1, 1, 5))


def test_build_model_uses_patch_convs_and_saves_a_plain_checkpoint(tmp_path):
    torch.manual_seed(0)
    fast = build_model(ModelConfig(), vocab_size=30, pad_token_id=0).eval()
    # The demo front end's kernel == stride layers: 10/10, 3/3 and the last 2/2; the others overlap.
    layers = fast.wav2vec2.feature_extractor.conv_layers
    assert sum(isinstance(m, PatchConv1d) for m in fast.modules()) == 3
    assert isinstance(layers[0].conv, PatchConv1d)
    assert type(layers[2].conv) is nn.Conv1d
    fast.save_pretrained(tmp_path)
    plain = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()  # a plain checkpoint: plain convolutions
    assert type(plain.wav2vec2.feature_extractor.conv_layers[0].conv) is nn.Conv1d
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 8000)
    torch.testing.assert_close(fast(x).logits, plain(x).logits, atol=1e-5, rtol=1e-5)
    assert use_patch_convs(plain) == 3
    torch.testing.assert_close(plain(x).logits, fast(x).logits, atol=1e-5, rtol=1e-5)


def test_use_patch_convs_leaves_overlapping_convolutions_alone():
    model = nn.Sequential(nn.Conv1d(1, 4, 10, stride=5), nn.Conv1d(4, 4, 3, stride=3, padding=1))
    assert use_patch_convs(model) == 0
