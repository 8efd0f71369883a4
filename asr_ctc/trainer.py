"""``CTCTrainer``: the HuggingFace ``Trainer`` with a swappable CTC loss.

The loss is computed from the logits, outside the model, so the config chooses it: ``loss.impl`` picks
this project's loss (``custom``), ``torch.nn.functional.ctc_loss`` (``torch``), the model's own
(``builtin``) or the slow reference port (``reference``), all fed the same frame lengths, targets and blank;
the variants' keys (:mod:`asr_ctc.variants`) change the per-utterance loss, which this module only reduces.
Here live the Trainer glue: labels to targets, frame lengths, reductions that are exact under gradient
accumulation and DDP, the per-epoch seeded train samplers (:mod:`asr_ctc.sampling`), the label prior's
hook, the two views of CR-CTC, and the evaluation contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from .config import LossConfig
from .data.collator import IGNORE_INDEX
from .modeling import frame_lengths
from .sampling import seeded_per_epoch
from .variants import per_utterance_loss, timing
from .variants.encoder import encoder_variant_loss


class NonFiniteLossError(RuntimeError):
    """A training batch gave an infinite or NaN loss; raised before the optimiser can apply it."""


def target_mask(labels: torch.Tensor, blank: int) -> torch.Tensor:
    """(B, U) bool: the entries of ``labels`` (B, U) int64 that are targets, neither -100 nor ``blank``.

    Read exactly as the model's builtin loss reads labels (transformers' ``ForCTCLoss``: ``labels != -100``
    and ``labels != blank``): a CTC target can never be the blank, so a label row padded with the
    tokenizer's pad id (the blank) instead of -100, a common home-made collator's choice, means the same
    targets to every loss implementation.
    """
    return (labels != IGNORE_INDEX) & (labels != blank)


def ctc_targets(labels: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded targets (B, U) int64 and target lengths (B,) int64 of collated ``labels`` (B, U) int64.

    Each row keeps its :func:`target_mask` entries in order, moved to the front (as the builtin loss's
    ``masked_select`` does), and is filled with ``blank`` after its length: every implementation ignores
    entries past a target length, and ``blank`` is a valid class id where -100 is not.
    """
    keep = target_mask(labels, blank)
    # A stable sort of "not kept" puts the kept entries first, in their order (a no-op for -100 padding).
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices
    targets = torch.where(keep, labels, torch.full_like(labels, blank)).gather(-1, order)
    return targets, keep.sum(-1)


class CTCTrainer(Trainer):
    """A ``transformers.Trainer`` whose ``compute_loss`` is a configurable CTC loss.

    Args:
        loss_config: which loss and reduction (:class:`asr_ctc.config.LossConfig`, validated when built):
            ``impl`` ``custom`` | ``torch`` | ``builtin`` | ``reference``; ``reduction`` ``mean``
            (F.ctc_loss's: each utterance's loss over its target length, averaged), ``sum``, or
            ``token_mean`` (sum over the number of target tokens in the optimiser step); ``zero_infinity``
            zeroes the loss and gradient of utterances with no valid alignment.
        ctc_impl, ctc_reduction, ctc_zero_infinity: the same three choices as keywords (used when
            ``loss_config`` is not given; giving both is an error).
        *args, **kwargs: as for ``transformers.Trainer`` (pass the processor as ``processing_class``).

    Every reduction is normalised per optimiser step, so gradient accumulation and several processes
    give the same update as one big batch: ``mean`` is a per-batch mean that the Trainer divides by the
    accumulation steps (exact for equal-sized micro-batches); ``sum`` and ``token_mean`` are already
    totals over the step (``token_mean`` divides by ``num_items_in_batch``, which the Trainer counts over all
    accumulated micro-batches and, with ``average_tokens_across_devices``, all processes) and are multiplied
    by the number of processes to undo DDP's gradient averaging.

    Evaluation follows the Trainer's contract: ``prediction_step`` returns the logits (padding frames
    forced to the blank, see there), and ``preprocess_logits_for_metrics`` / ``compute_metrics`` see them as
    for any model; :func:`asr_ctc.metrics.argmax_logits` keeps only the ids, to save memory.
    """

    def __init__(
        self,
        *args: Any,
        loss_config: LossConfig | None = None,
        ctc_impl: str | None = None,
        ctc_reduction: str | None = None,
        ctc_zero_infinity: bool | None = None,
        **kwargs: Any,
    ) -> None:
        keywords = {"impl": ctc_impl, "reduction": ctc_reduction, "zero_infinity": ctc_zero_infinity}
        keywords = {k: v for k, v in keywords.items() if v is not None}
        if loss_config is None:
            try:
                loss_config = LossConfig(**keywords)
            except ValueError as exc:  # name the keyword the caller used: "ctc_impl: expected one of ..."
                raise ValueError(f"ctc_{exc}") from exc
        elif keywords:
            given = ", ".join("ctc_" + k for k in keywords)
            raise ValueError(f"loss_config: given together with {given}; pass one or the other")
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        # The Trainer counts target tokens over the accumulated micro-batches (num_items_in_batch) only for
        # models that "accept loss kwargs"; token_mean needs that count whatever the model.
        self.model_accepts_loss_kwargs = True
        # A per-batch mean still has to be divided by the accumulation steps; sums over the step do not.
        self.loss_is_scaled_for_ga = loss_config.reduction != "mean"
        timing.install(self)  # the label-prior callback, when loss.label_prior_beta > 0
        if loss_config.impl == "builtin":
            # The one place the model's own CTC settings are written: they are this loss config's.
            config = self.accelerator.unwrap_model(self.model).config
            config.ctc_loss_reduction = loss_config.reduction
            config.ctc_zero_infinity = loss_config.zero_infinity

    @property
    def ctc_impl(self) -> str:
        return self.loss_config.impl

    @property
    def ctc_reduction(self) -> str:
        return self.loss_config.reduction

    @property
    def ctc_zero_infinity(self) -> bool:
        return self.loss_config.zero_infinity

    # -- pieces of the loss ---------------------------------------------------------------------------

    def blank_id(self, model: nn.Module) -> int:
        """The CTC blank: the tokenizer's pad id (as the model's builtin loss uses)."""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
            return int(tokenizer.pad_token_id)
        return int(self.accelerator.unwrap_model(model).config.pad_token_id)

    def frame_lengths(self, model: nn.Module, inputs: dict[str, Any], num_frames: int) -> torch.Tensor:
        """(B,) int64 output frames per utterance, from the attention mask through the conv-stack formula."""
        mask = inputs.get("attention_mask")
        if mask is None:
            batch = inputs["input_values"].shape[0]
            return torch.full((batch,), num_frames, dtype=torch.long, device=inputs["input_values"].device)
        return frame_lengths(self.accelerator.unwrap_model(model), mask.sum(-1))

    def per_utterance_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        frame_lengths: torch.Tensor,
        blank: int,
        label_prior: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) per-utterance losses of ``logits`` (B, T, C) and their (B,) target lengths: the configured
        CTC and its variants, :func:`asr_ctc.variants.per_utterance_loss`. ``label_prior``: the final
        output's loss (the label prior scores it, learns from it); False for intermediate layers' logits."""
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
        targets, target_lengths = ctc_targets(labels, blank)
        # Label priors (asr_ctc.variants.timing): the CTC runs on log p - beta log prior once the prior is on;
        # the scores are log_probs itself when it is off.
        scores = timing.training_scores(self, log_probs, frame_lengths) if label_prior else log_probs
        loss = per_utterance_loss(
            log_probs, targets, frame_lengths, target_lengths, blank, self.loss_config, scores=scores
        )
        return loss, target_lengths

    def reduce(
        self, loss: torch.Tensor, target_lengths: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """Reduce (B,) per-utterance losses as configured (see the class docstring)."""
        if self.ctc_reduction == "mean":
            return (loss / target_lengths.clamp_min(1).to(loss.dtype)).mean()
        total = loss.sum()
        if self.ctc_reduction == "token_mean":
            if num_items_in_batch is None:
                num_items_in_batch = target_lengths.sum()
            total = total / num_items_in_batch
        return total * self._process_scale()

    def _process_scale(self) -> int:
        world = self.accelerator.num_processes
        if world <= 1 or not self.model.training:
            return 1
        if self.ctc_reduction == "token_mean" and not self.args.average_tokens_across_devices:
            return 1  # the count is per process then, so each process's loss is already a mean
        return world

    # -- Trainer hooks ----------------------------------------------------------------------------------

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        # The Trainer counts the target tokens (token_mean's denominator) as labels != -100; count them as
        # the loss reads them (target_mask), so pad-id padding is not counted as targets.
        blank = self.blank_id(self.model)
        batch_samples = [
            {**b, "labels": torch.where(target_mask(b["labels"], blank), b["labels"], IGNORE_INDEX)}
            if isinstance(b, Mapping) and torch.is_tensor(b.get("labels"))
            else b
            for b in batch_samples
        ]
        return super()._get_num_items_in_batch(batch_samples, device)

    def _length_grouped_sampler(self, dataset: Any, batch_size: int, generator: Any = None) -> Any:
        """A length-grouped sampler fed from the dataset's index (``dataset.lengths``), if it has one.

        Without it the Trainer would read every item of a non-``datasets`` dataset to measure its length,
        which for a lazily decoded dataset means decoding the whole corpus before the first step.
        """
        lengths = getattr(dataset, "lengths", None)
        if self.args.train_sampling_strategy != "group_by_length" or lengths is None:
            return None
        return LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        sampler = self._length_grouped_sampler(dataset, batch)
        if sampler is None:
            sampler = super()._get_train_sampler(train_dataset)
        # Every epoch's order a pure function of (seed, epoch), not of the global RNG when the epoch starts,
        # so a run resumed in any epoch trains on the same batches (asr_ctc.sampling).
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return seeded_per_epoch(sampler, seed)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        generator = torch.Generator().manual_seed(seed)
        sampler = self._length_grouped_sampler(eval_dataset, self.args.eval_batch_size, generator)
        return sampler if sampler is not None else super()._get_eval_sampler(eval_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        # An example's "id" is not a model argument, but the collator turns it into utterance_ids, which
        # compute_loss reads (and drops) to name a bad batch: keep the unused-column filter off it.
        super()._set_signature_columns_if_needed()
        if "id" not in self._signature_columns:
            self._signature_columns.append("id")

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        utterance_ids = inputs.pop("utterance_ids", None)
        if self.ctc_impl == "builtin":
            outputs, loss, per_utt = self._builtin_loss(model, inputs, labels)
        else:
            outputs, per_utt, target_lengths = self._configured_loss(model, inputs, labels)
            loss = self.reduce(per_utt, target_lengths, num_items_in_batch)
        if model.training and not torch.isfinite(loss):
            # The first B rows are the batch itself (CR-CTC appends a second view of it).
            self._raise_non_finite(loss, per_utt, outputs.logits[: labels.shape[0]], utterance_ids)
        return (loss, outputs) if return_outputs else loss

    def _builtin_loss(self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor) -> tuple:
        """The model's own loss: (outputs, reduced loss, None: no per-utterance losses)."""
        outputs = model(**inputs, labels=labels)
        loss = outputs.loss
        if self.ctc_reduction == "sum":
            loss = loss * self._process_scale()
        return outputs, loss, None

    def _configured_loss(self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor) -> tuple:
        """(outputs, (B,) per-utterance losses, (B,) target lengths) of the configured loss and variants."""
        views = 1
        if model.training and self.loss_config.consistency_weight > 0:
            # CR-CTC: both views in one forward over the doubled batch; the model's masking draws each row's
            # time masks independently, so the two copies of an utterance are masked differently.
            views = 2
            inputs = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in inputs.items()}
            labels = torch.cat([labels, labels])
        outputs = model(**inputs)
        lengths = self.frame_lengths(model, inputs, outputs.logits.shape[1])
        blank = self.blank_id(model)
        per_utt, target_lengths = self.per_utterance_loss(outputs.logits, labels, lengths, blank)
        per_utt = encoder_variant_loss(
            per_utt,
            outputs.logits,
            lengths,
            self.loss_config,
            lambda logits: self.per_utterance_loss(logits, labels, lengths, blank, label_prior=False)[0],
            getattr(self.accelerator.unwrap_model(model), "intermediate_ctc", None),
            views,
        )
        return outputs, per_utt, target_lengths[: per_utt.shape[0]]

    def _raise_non_finite(
        self,
        loss: torch.Tensor,
        per_utt: torch.Tensor | None,
        logits: torch.Tensor,
        utterance_ids: list[str] | None,
    ) -> None:
        """Name the step and the utterances, and stop before the optimiser applies a NaN/inf gradient."""
        bad_logits = (~torch.isfinite(logits)).flatten(1).any(1)
        bad = bad_logits if per_utt is None else bad_logits | ~torch.isfinite(per_utt)
        idx = bad.nonzero().flatten().tolist()
        names = [utterance_ids[i] for i in idx] if utterance_ids else [f"batch element {i}" for i in idx]
        if bad_logits.any():
            cause = "the model produced NaN/inf logits (diverged? try a lower learning rate, or fp32)"
        else:
            cause = (
                "no valid CTC alignment (a transcript needs more frames than the audio gives); "
                "set loss.zero_infinity=true or filter the data"
            )
        raise NonFiniteLossError(
            f"non-finite training loss {loss.item()} at step {self.state.global_step + 1} "
            f"(epoch {self.state.epoch or 0:.2f}); offending utterances: {', '.join(names) or 'unknown'}; "
            f"cause: {cause}. The optimiser step was not taken; the last checkpoint is intact."
        )

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Loss, logits (B, T, C) and labels, as the Trainer's contract says.

        The logits of each utterance's padding frames (past its frame length) are replaced by a row that
        puts all the probability on the blank (0 there, the dtype's most negative value elsewhere): a model
        trained on padded batches never learned what to emit on those frames, and argmax-then-decode of
        this row gives nothing, so any HF-style ``compute_metrics`` sees the length-cut result.
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        logits = outputs.logits.detach()
        lengths = self.frame_lengths(model, inputs, logits.shape[1])
        padding = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0) >= lengths.unsqueeze(1)
        blank_row = torch.full((logits.shape[-1],), torch.finfo(logits.dtype).min, dtype=logits.dtype)
        blank_row[self.blank_id(model)] = 0
        logits = torch.where(padding.unsqueeze(-1), blank_row.to(logits.device), logits)
        return loss.detach(), logits, inputs["labels"]
