"""Make a first-order-only ``torch.autograd.Function`` fail loudly on a second derivative.

The project's CTC losses (:func:`asr_ctc.ctc_loss`, :func:`asr_ctc.seq_loss_util.ctc_loss`) compute their
gradient in the forward pass, from the state posteriors, and their backward only rescales it. Autograd
cannot differentiate that rescaled tensor with respect to the input: under ``create_graph=True`` the
backward's result is a constant as far as the input is concerned, so a Hessian-vector product through it
would silently lose the loss's own curvature and return only the other layers' (``log_softmax``'s) part
(the bug class of pytorch#70108, where torch's own CTC raises instead).

:func:`torch.autograd.function.once_differentiable` does not catch that case: it only guards when the
incoming gradient requires grad, and ``loss.sum()``'s incoming gradient does not. :func:`first_order_only`
ties the backward's result to the input with a node whose own backward raises one clear error, so a second
derivative that needs the missing term fails, while a first-order gradient taken with ``create_graph=True``
(e.g. a gradient penalty on other inputs) still works and stays exact.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SecondDerivativeError", "first_order_only"]


class SecondDerivativeError(RuntimeError):
    """A second derivative was asked of a function whose backward is not differentiable."""


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on ``grad`` (a copy) in the forward; its backward raises :class:`SecondDerivativeError`."""

    @staticmethod
    def forward(ctx: Any, grad: torch.Tensor, source: torch.Tensor, message: str) -> torch.Tensor:
        ctx.message = message
        return grad.clone()

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> None:
        raise SecondDerivativeError(ctx.message)


def first_order_only(grad: torch.Tensor, source: torch.Tensor, function: str, argument: str) -> torch.Tensor:
    """``grad`` unchanged, but differentiating it with respect to ``source`` raises a clear error.

    Call it on the result of a custom backward that is exact to first order only.

    Args:
        grad: the backward's gradient with respect to ``source`` (any shape and dtype).
        source: the forward's input ``grad`` is the gradient of (as saved for the backward).
        function: the public function's name, for the message (e.g. ``"asr_ctc.ctc_loss"``).
        argument: ``source``'s argument name, for the message (e.g. ``"log_probs"``).

    Returns:
        ``grad`` itself outside ``create_graph`` (grad mode off in the backward) or when ``source`` needs
        no gradient; otherwise a copy whose backward raises :class:`SecondDerivativeError`.
    """
    if not (torch.is_grad_enabled() and source.requires_grad):
        return grad
    message = (
        f"{function}: second derivatives with respect to {argument} are not implemented (its backward "
        "rescales posteriors computed in the forward pass, which autograd cannot differentiate); a "
        "double backward would silently drop the CTC loss's curvature, so it is refused. For Hessian-vector "
        "products, differentiate a loss built from plain autograd ops, e.g. "
        "asr_ctc.seq_loss_util.calculate_alpha_beta(..., exact=True) on calculate_log_label_prob(...), or "
        "take finite differences of first-order gradients."
    )
    return _FirstOrderOnly.apply(grad, source, message)
