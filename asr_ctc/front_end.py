"""wav2vec2's convolutional front end computed time-major, as matrix products: exact, and faster on a CPU.

The stock feature encoder runs ``nn.Conv1d`` on channel-major ``(B, C, T)`` tensors and the model transposes
the result to time-major ``(B, T, C)`` for the transformer. On the CPU that layout costs more than the
arithmetic: oneDNN's backward of a 1-channel convolution over raw audio, and the ``contiguous()`` copies
that every convolution backward, reshape and GroupNorm makes of its transposed neighbours (``copy_`` alone
was about 9% of a training step of the demo model). :class:`TimeMajorFeatureEncoder` computes the same
layers on time-major tensors, where a convolution of kernel ``k`` and stride ``s`` is a sum of
``ceil(k / s)`` matrix products over free reshapes of its input (below). It holds the original layers,
so the state dict, the checkpoint and the outputs (to float rounding) are those of the stock encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The conv layer classes of the wav2vec2 family (HuBERT, WavLM, UniSpeech, ... copy them): conv -> norm ->
# activation, the norm a per-channel GroupNorm (first layer only), a LayerNorm over channels, or none.
_LAYER_KINDS = ("NoLayerNormConvLayer", "LayerNormConvLayer", "GroupNormConvLayer")


def conv_time_major(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` (no padding, dilation or groups) applied to a time-major input.

    Why it is cheap: with ``P = x.reshape(B, T / s, s * C)`` (a free view), row ``t`` of ``P`` holds input
    frames ``t*s .. t*s + s - 1``, so output frame ``t`` = ``sum_j P[t + j, :taps_j * C] @ W_j`` over the
    kernel's blocks of ``s`` taps. Each term is one matmul over every row of ``P`` (a strided 2-D view, which
    BLAS reads in place); the shifts ``t + j`` are slices of its result.

    Args:
        x: (B, T, C_in) float, contiguous.
        conv: an ``nn.Conv1d`` with ``in_channels == C_in``; its weight (C_out, C_in, k) and bias are used.

    Returns:
        (B, (T - k) // s + 1, C_out), contiguous.
    """
    k, s = conv.kernel_size[0], conv.stride[0]
    batch, length, channels = x.shape
    frames = (length - k) // s + 1
    rows = -(-length // s)
    if rows * s != length:  # zero frames that no output reads, so that the reshape below is a view
        x = F.pad(x, (0, 0, 0, rows * s - length))
    patches = x.reshape(batch, rows, s * channels)
    out = None
    for block in range(-(-k // s)):
        taps = min(s, k - block * s)
        # weight[o, c, block*s + i] -> W[o, i*C + c], the order of P's columns.
        weight = conv.weight[:, :, block * s : block * s + taps]
        weight = weight.transpose(1, 2).reshape(conv.out_channels, taps * channels)
        term = F.linear(patches[..., : taps * channels], weight, conv.bias if block == 0 else None)
        term = term[:, block : block + frames]
        out = term if out is None else out + term
    return out.contiguous()  # a no-op but for a lone block (kernel <= stride), whose slice is a view


def _norm_time_major(x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """The layer's norm on (B, T, C): GroupNorm with a group per channel normalises each channel over time."""
    if norm is None:
        return x
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    # Statistics over time are a strided reduction in this layout, and slow: the native kernel on the
    # channel-major copy (and a copy back) is faster than normalising in place, forward and backward.
    x = F.group_norm(x.transpose(1, 2), norm.num_groups, norm.weight, norm.bias, norm.eps)
    return x.transpose(1, 2).contiguous()


def supports_time_major(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a wav2vec2-family conv feature encoder that :class:`TimeMajorFeatureEncoder`
    computes exactly: plain convolutions (no padding, dilation or groups), each followed by an optional
    per-channel GroupNorm or channel LayerNorm, then the activation."""
    layers = getattr(encoder, "conv_layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for layer in layers:
        conv, norm = getattr(layer, "conv", None), getattr(layer, "layer_norm", None)
        if not type(layer).__name__.endswith(_LAYER_KINDS) or type(conv) is not nn.Conv1d:
            return False
        if conv.padding not in (0, (0,)) or conv.dilation != (1,) or conv.groups != 1:
            return False
        if conv.padding_mode != "zeros" or not hasattr(layer, "activation"):
            return False
        if isinstance(norm, nn.GroupNorm) and norm.num_groups != norm.num_channels:
            return False
        if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) != (conv.out_channels,):
            return False
        if norm is not None and not isinstance(norm, nn.GroupNorm | nn.LayerNorm):
            return False
    return True


class TimeMajorFeatureEncoder(nn.Module):
    """A drop-in for a wav2vec2-family feature encoder (see :func:`supports_time_major`) that computes its
    layers time-major. It keeps the original ``conv_layers`` (same parameters and state-dict keys) and
    falls back to them, unchanged, under gradient checkpointing and for inputs shorter than a kernel
    (where the convolution raises its own error)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        if not supports_time_major(encoder):
            raise ValueError(f"encoder: {type(encoder).__name__} is not a supported conv feature encoder")
        self.conv_layers = encoder.conv_layers
        self.gradient_checkpointing = getattr(encoder, "gradient_checkpointing", False)
        # The stock encoder runs the cases this class does not. It is kept out of the module tree: its
        # layers are these, and registering it would list every parameter twice in the state dict.
        object.__setattr__(self, "_stock", encoder)

    @property
    def _requires_grad(self) -> bool:
        return self._stock._requires_grad

    def _freeze_parameters(self) -> None:
        """What ``model.freeze_feature_encoder()`` calls."""
        self._stock._freeze_parameters()

    def _long_enough(self, length: int) -> bool:
        for layer in self.conv_layers:
            k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
            if length < k:
                return False
            length = (length - k) // s + 1
        return True

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """input_values: (B, L) float audio -> (B, C, T) features (a transposed view of a time-major tensor,
        so the model's ``transpose(1, 2)`` gives back a contiguous (B, T, C))."""
        checkpointing = self.gradient_checkpointing or any(
            getattr(layer, "gradient_checkpointing", False) for layer in self.conv_layers
        )
        if checkpointing or input_values.dim() != 2 or not self._long_enough(input_values.shape[-1]):
            self._stock.train(self.training)
            return self._stock(input_values)
        hidden = input_values[:, :, None]
        for layer in self.conv_layers:
            hidden = conv_time_major(hidden, layer.conv)
            hidden = layer.activation(_norm_time_major(hidden, getattr(layer, "layer_norm", None)))
        return hidden.transpose(1, 2)


def use_time_major_front_end(model: nn.Module) -> bool:
    """Swap, in place, the feature encoder of a wav2vec2-family model (``model.base_model.feature_extractor``)
    for a :class:`TimeMajorFeatureEncoder` over the same layers. Returns whether it did: other encoders (and
    models without one) are left as they are."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "feature_extractor", None)
    if encoder is None or isinstance(encoder, TimeMajorFeatureEncoder) or not supports_time_major(encoder):
        return False
    base.feature_extractor = TimeMajorFeatureEncoder(encoder)
    return True
