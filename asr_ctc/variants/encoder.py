"""Encoder-level CTC variants: intermediate, self-conditioned and consistency-regularised CTC.

These change how the encoder is trained, not the CTC lattice, so they act on the model (taps on its encoder
layers) and on the batch (two views), and every CTC term they add is the configured loss of
:mod:`asr_ctc.variants` on other logits.

* **Intermediate CTC** (Lee & Watanabe, "Intermediate loss regularization for CTC-based speech
  recognition", ICASSP 2021): the outputs of chosen encoder layers go through the model's own CTC head
  (shared weights) and get a CTC loss each; per utterance
  ``L = (1 - lambda) L_final + lambda * mean_k L_k``.
* **Self-conditioned CTC** (Nozaki & Komatsu, "Relaxing the conditional independence assumption of CTC-based
  ASR by conditioning on intermediate predictions", Interspeech 2021): the intermediate posteriors
  ``softmax(Z_k)``, projected back to the hidden size by a linear layer of their own, are added to the layer's
  output, so the next layer sees them: ``x_k <- x_k + W_k softmax(Z_k) + b_k``, in training and inference.
* **CR-CTC** (Yao et al., "CR-CTC: Consistency regularization on CTC for improved speech recognition",
  ICLR 2025): each batch twice, under two different draws of the model's time masks (one forward pass over
  the doubled batch), CTC on both views plus a frame-wise symmetric KL between their posteriors, each side
  against the other's stop-gradient; per utterance
  ``L = (L_a + L_b) / 2 + alpha * (KL(sg(p_b) || p_a) + KL(sg(p_a) || p_b)) / 2``, the KLs summed over the
  utterance's real frames (icefall's ``cr_loss``, up to its frame normalisation). The paper uses larger
  time masks than plain CTC training (about 2.5 times the masked share) and ``alpha = 0.2``.

Which layer feeds the shared head: the output of encoder layer ``k`` (1-based, ``1 <= k <
num_hidden_layers``). In a pre-LN ("stable layer norm") encoder the final ``encoder.layer_norm`` runs after
the last layer, so an intermediate output goes through it too before the head (as ESPnet's InterCTC
normalises with ``after_norm``); in a post-LN encoder (wav2vec2-base, HuBERT-base) every layer's output is
already normalised. :func:`_final_norm` holds that rule, and a test checks it per family by tapping the last
layer: its head output must equal the model's logits.

Saving: the self-conditioning projections are a submodule of the model (``intermediate_ctc.*`` in its state
dict) and the layout is recorded in ``config.json`` (``asr_ctc_intermediate_ctc``), so
:func:`asr_ctc.modeling.load_ctc_model` rebuilds the taps. Plain ``transformers`` loading
(``AutoModelForCTC.from_pretrained``, ``pipeline``) drops the projections (it reports them as unused
weights) and runs the encoder without self-conditioning: plain CTC on the final layer. For a model trained
with intermediate CTC only, that is exactly the trained model; for a self-conditioned one it is a different
(usually worse) network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CONFIG_KEY",
    "IntermediateCTC",
    "attach_intermediate_ctc",
    "combine_intermediate",
    "consistency_kl",
    "encoder_variant_loss",
    "restore_intermediate_ctc",
]

# The config.json attribute that records the taps: {"layers": [...], "self_conditioning": bool}.
CONFIG_KEY = "asr_ctc_intermediate_ctc"
# transformers names the families whose encoder applies its layer_norm after the last layer whatever
# do_stable_layer_norm says (the conformer encoder always ends in a LayerNorm).
_NORM_AFTER_LAYERS = {"wav2vec2-conformer"}


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):  # DDP / DataParallel
        model = model.module
    return model


def _encoder(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not isinstance(getattr(encoder, "layers", None), nn.ModuleList):
        raise ValueError(
            f"loss.intermediate_layers: {type(model).__name__} has no encoder.layers to tap "
            "(expected a wav2vec2-family AutoModelForCTC)"
        )
    return encoder


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The encoder's closing LayerNorm when it runs after the last layer (pre-LN encoders), else None."""
    config = model.config
    if getattr(config, "do_stable_layer_norm", False) or config.model_type in _NORM_AFTER_LAYERS:
        return _encoder(model).layer_norm
    return None


class IntermediateCTC(nn.Module):
    """The taps on a CTC model's encoder layers: intermediate logits through the shared head, and (optionally)
    the self-conditioning projections.

    Args:
        layers: 1-based encoder layer indices whose outputs are tapped, each in ``[1, num_hidden_layers)``.
        hidden_size: the encoder's width ``H``.
        vocab_size: the CTC head's outputs ``C``.
        self_conditioning: add ``Linear(C -> H)(softmax(logits))`` to each tapped layer's output.

    After a forward pass of the model, :attr:`logits` holds one ``(B, T, C)`` tensor per tapped layer, in
    ``layers`` order (cleared at the start of every forward).
    """

    def __init__(self, layers: Sequence[int], hidden_size: int, vocab_size: int, self_conditioning: bool):
        super().__init__()
        self.layers = [int(k) for k in layers]
        self.self_conditioning = bool(self_conditioning)
        self.projections = (
            nn.ModuleDict({str(k): nn.Linear(vocab_size, hidden_size) for k in self.layers})
            if self_conditioning
            else None
        )
        self.logits: list[Tensor] = []

    def spec(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "self_conditioning": self.self_conditioning}


def _tap(model: nn.Module, taps: IntermediateCTC, layer: int, norm: nn.Module | None):
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        normed = norm(hidden) if norm is not None else hidden
        # The shared head, with the dropout the final layer's output gets before it.
        logits = model.lm_head(model.dropout(normed))
        taps.logits.append(logits)
        if taps.projections is None:
            return None
        # softmax in float32: the posteriors are the conditioning signal, and bf16 softmax of many classes
        # loses the small ones.
        conditioned = hidden + taps.projections[str(layer)](logits.float().softmax(-1).to(hidden.dtype))
        return (conditioned, *output[1:]) if isinstance(output, tuple) else conditioned

    return hook


def attach_intermediate_ctc(
    model: nn.Module, layers: Sequence[int], self_conditioning: bool
) -> IntermediateCTC:
    """Tap ``layers`` of ``model``'s encoder (:class:`IntermediateCTC`) and record the layout in its config.

    The taps are forward hooks, so the intermediate logits come out of the model's one forward pass; the
    module is registered as ``model.intermediate_ctc`` so its parameters train, save and load with the model.

    Raises:
        ValueError: a layer index outside ``[1, num_hidden_layers)``, a repeated index, a model without
            ``encoder.layers``, or taps already attached.
    """
    model = _unwrap(model)
    encoder = _encoder(model)
    n_layers = len(encoder.layers)
    layers = [int(k) for k in layers]
    bad = [k for k in layers if not 1 <= k < n_layers]
    if bad or len(set(layers)) != len(layers) or not layers:
        raise ValueError(
            f"loss.intermediate_layers: expected distinct encoder layer indices in [1, {n_layers - 1}] "
            f"(1-based; the last layer {n_layers} is the final CTC's), got {layers}"
        )
    if hasattr(model, "intermediate_ctc"):
        raise ValueError("loss.intermediate_layers: the model already has intermediate CTC taps")
    taps = IntermediateCTC(layers, model.config.hidden_size, model.config.vocab_size, self_conditioning)
    taps.to(device=model.lm_head.weight.device, dtype=model.lm_head.weight.dtype)
    model.intermediate_ctc = taps
    norm = _final_norm(model)
    # Clear the previous forward's logits when the model's forward starts (a pre-hook on the model).
    model.register_forward_pre_hook(lambda *_: taps.logits.clear())
    for k in layers:
        encoder.layers[k - 1].register_forward_hook(_tap(model, taps, k, norm))
    model.config.update({CONFIG_KEY: taps.spec()})
    return taps


def restore_intermediate_ctc(model: nn.Module, state_dict: dict[str, Tensor] | None = None) -> nn.Module:
    """Rebuild the taps that ``model.config`` records (a model loaded with ``from_pretrained``) and load the
    projections' weights from ``state_dict`` (the checkpoint's tensors: plain loading dropped them).

    A model whose config records no taps is returned unchanged.

    Raises:
        ValueError: the config records self-conditioning but ``state_dict`` lacks its projections.
    """
    spec = getattr(model.config, CONFIG_KEY, None)
    if not spec:
        return model
    taps = attach_intermediate_ctc(model, spec["layers"], spec["self_conditioning"])
    if taps.projections is not None:
        prefix = "intermediate_ctc."
        own = {k[len(prefix) :]: v for k, v in (state_dict or {}).items() if k.startswith(prefix)}
        missing = set(taps.state_dict()) - set(own)
        if missing:
            raise ValueError(
                f"model: config.json records self-conditioned CTC on layers {spec['layers']} but the "
                f"weights lack {sorted(missing)[0]}"
            )
        taps.load_state_dict(own)
    return model


def combine_intermediate(final: Tensor, intermediate: Sequence[Tensor], weight: float) -> Tensor:
    """``(1 - weight) * final + weight * mean_k intermediate[k]``, per utterance.

    Args:
        final: (B,) float, the final layer's per-utterance CTC losses.
        intermediate: K tensors (B,) float, the tapped layers' losses.
        weight: lambda in [0, 1]; at 0 the result is ``final`` itself (no arithmetic on it).
    """
    if weight == 0 or not intermediate:
        return final
    return (1 - weight) * final + weight * torch.stack(list(intermediate)).mean(0)


def consistency_kl(log_probs_a: Tensor, log_probs_b: Tensor, frame_lengths: Tensor) -> Tensor:
    """CR-CTC's symmetric, stop-gradient KL between two views' frame posteriors, per utterance.

    ``(KL(sg(p_b) || p_a) + KL(sg(p_a) || p_b)) / 2`` summed over each utterance's real frames, where
    ``KL(q || p) = sum_k q(k) (log q(k) - log p(k))`` (Yao et al., ICLR 2025, eq. 3; icefall's
    ``cr_loss``). Each view is pulled towards the other's detached posteriors, so neither collapses onto the
    other's gradient.

    Args:
        log_probs_a, log_probs_b: (B, T, C) float, log-posteriors of the two views.
        frame_lengths: (B,) int64, real frames per utterance; later frames are padding and not counted.

    Returns:
        (B,) float, the per-utterance consistency loss (in nats, summed over frames).
    """
    kl_a = F.kl_div(log_probs_a, log_probs_b.detach(), log_target=True, reduction="none").sum(-1)
    kl_b = F.kl_div(log_probs_b, log_probs_a.detach(), log_target=True, reduction="none").sum(-1)
    t = torch.arange(log_probs_a.shape[1], device=log_probs_a.device)
    real = (t.unsqueeze(0) < frame_lengths.to(t.device).unsqueeze(1)).to(kl_a.dtype)
    return 0.5 * ((kl_a + kl_b) * real).sum(-1)


def encoder_variant_loss(
    final: Tensor,
    logits: Tensor,
    frame_lengths: Tensor,
    config: Any,
    ctc: Any,
    taps: IntermediateCTC | None,
    views: int,
) -> Tensor:
    """Per-utterance loss of the encoder-level variants on top of the final layer's CTC losses.

    Args:
        final: (V * B,) float, the final logits' per-utterance CTC losses (``V`` views of ``B`` utterances,
            view-major: rows ``v * B + i``).
        logits: (V * B, T, C) float, the final logits.
        frame_lengths: (V * B,) int64, real frames per row.
        config: the :class:`asr_ctc.config.LossConfig` (``intermediate_weight``, ``consistency_weight``).
        ctc: ``logits (V * B, T, C) -> (V * B,)`` per-utterance losses, the configured CTC loss.
        taps: the model's :class:`IntermediateCTC` (its logits from this forward pass), or None.
        views: 1, or 2 for CR-CTC.

    Returns:
        (B,) float: ``(1 - lambda) L_final + lambda mean_k L_k``; with two views, averaged over the views plus
        ``consistency_weight`` times :func:`consistency_kl`. With every knob at 0 and one view it is ``final``
        itself.
    """
    loss = final
    if taps is not None and config.intermediate_weight > 0:
        loss = combine_intermediate(final, [ctc(z) for z in taps.logits], config.intermediate_weight)
    if views == 1:
        return loss
    b = loss.shape[0] // 2
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    kl = consistency_kl(log_probs[:b], log_probs[b:], frame_lengths[:b])
    return 0.5 * (loss[:b] + loss[b:]) + config.consistency_weight * kl
