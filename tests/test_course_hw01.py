"""The reference author's course test, reproduced against ``asr_ctc.seq_loss_util``.

The author's 2025 PyTorch course (chanwcom/courses, ``2025_spring/xai604/assignments/hw01/ctc_loss_test.py``)
tests his ``ctc_loss_lib`` through ``LOG_0``, ``to_blank_augmented_labels``, ``label_trans_allowance_table``,
``calculate_log_label_prob`` and ``calculate_alpha_beta``, and his library also exports ``sequence_mask`` and
the ``update_non_blank_token_index`` flag. These tests make the same calls, with the same argument shapes and
dtypes (int32 label dicts, int64 label tables, softmax outputs from ``np.random.seed(0)`` normals), and check
the results against independent references written here (an explicit loop over the transition rule, a
direct gather, a brute-force sum over every state path) instead of copying his expected numbers. The
course file itself is not vendored: the report of issue 23 gives the command that runs it unmodified.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asr_ctc import seq_loss_util as lib


def test_author_names_are_the_reference_functions() -> None:
    # One home per concept: the course name is the same function, not a copy.
    assert lib.label_trans_allowance_table is lib.label_trans_table
    assert {"label_trans_allowance_table", "sequence_mask"} <= set(lib.__all__)
    assert isinstance(lib.LOG_0, float) and lib.LOG_0 == pytest.approx(math.log(1e-307), rel=1e-6)


def test_to_blank_augmented_labels_int32_dict() -> None:
    inputs = {
        "SEQ_DATA": torch.tensor([[1, 3, 4, 2, 5], [1, 4, 2, 5, 0]], dtype=torch.int32),
        "SEQ_LEN": torch.tensor([5, 4], dtype=torch.int32),
    }
    out = lib.to_blank_augmented_labels(inputs, 0)
    # Labels shift up by one (blank 0 takes id 0), blanks interleave, padding is 0.
    assert out["SEQ_DATA"].tolist() == [
        [0, 2, 0, 4, 0, 5, 0, 3, 0, 6, 0],
        [0, 2, 0, 5, 0, 3, 0, 6, 0, 0, 0],
    ]
    assert out["SEQ_LEN"].tolist() == [11, 9]
    # torch.equal against the course's int32 expectation holds even though the result is int64.
    assert torch.equal(out["SEQ_LEN"], torch.tensor([11, 9], dtype=torch.int32))


def test_update_non_blank_token_index_false_keeps_ids() -> None:
    # A wav2vec 2.0 vocabulary already reserves the blank (its pad id): the flag leaves the ids as they are.
    inputs = {"SEQ_DATA": torch.tensor([[2, 3, 2]]), "SEQ_LEN": torch.tensor([3])}
    out = lib.to_blank_augmented_labels(inputs, blank_index=0, update_non_blank_token_index=False)
    assert out["SEQ_DATA"].tolist() == [[0, 2, 0, 3, 0, 2, 0]]
    shifted = lib.to_blank_augmented_labels(inputs, blank_index=0)
    assert shifted["SEQ_DATA"].tolist() == [[0, 3, 0, 4, 0, 3, 0]]


def _transition_rule(labels: list[int], num_states: int) -> torch.Tensor:
    """The CTC transition rule written as a loop: stay, advance, or skip a blank between distinct labels."""
    table = torch.full((num_states, num_states), lib.LOG_0)
    for i in range(num_states):
        for j in range(num_states):
            if j in (i, i + 1) or (j == i + 2 and labels[i] != labels[j]):
                table[i, j] = 0.0
    return table


def test_label_trans_allowance_table_ctc() -> None:
    labels = torch.tensor([[0, 1, 0, 2, 0, 3, 0], [0, 1, 0, 2, 0, 2, 0], [0, 1, 0, 1, 0, 0, 0]])
    labels_len = torch.tensor([7, 7, 5])
    actual = lib.label_trans_allowance_table(labels, labels_len)
    assert actual.shape == (3, 7, 7) and actual.dtype == torch.float32
    expected = torch.stack([_transition_rule(row, 7) for row in labels.tolist()])
    torch.testing.assert_close(actual, expected)
    # The cases the course's table exercises: 2 -> 2 forbids 3 -> 5, 1 -> 1 forbids 1 -> 3.
    assert actual[0, 3, 5] == 0.0 and actual[1, 3, 5] == lib.LOG_0 and actual[2, 1, 3] == lib.LOG_0


def _course_softmax(batch: int, frames: int, classes: int) -> torch.Tensor:
    np.random.seed(0)
    logits = np.random.normal(size=(batch, frames, classes)).astype(np.float32)
    return torch.softmax(torch.tensor(logits), dim=2)


def test_calculate_log_label_prob() -> None:
    labels = torch.tensor([[0, 1, 0, 2, 0], [0, 2, 0, 1, 0]])
    softmax_output = _course_softmax(2, 6, 3)
    actual = lib.calculate_log_label_prob(labels, softmax_output)
    assert actual.shape == (2, 6, 5)
    for b in range(2):
        for t in range(6):
            for s in range(5):
                expected = math.log(float(softmax_output[b, t, labels[b, s]]))
                assert float(actual[b, t, s]) == pytest.approx(expected, abs=1e-5)


def _prefix_path_sums(table: torch.Tensor, log_prob: torch.Tensor, frames: int) -> list[list[float]]:
    """Brute force: ``out[t][s]`` is the log of the summed weight of every state path that sits in s at t.

    Every path of ``frames`` steps is enumerated. As in the recursion, a path starts in state 0 "before"
    frame 0, so frame 0 may already sit in any state reachable from 0; each step multiplies the transition
    weight and the frame's emission.
    """
    allowed = table == 0.0  # LOG_0 entries are exp(-706.9) = 1e-307 > 0 in float64: test the flag
    probs = log_prob.double().exp()
    num_states = table.shape[0]
    totals = [[0.0] * num_states for _ in range(frames)]

    def walk(t: int, state: int, weight: float) -> None:
        if t == frames:
            return
        for nxt in range(num_states):
            if allowed[state, nxt]:
                reached = weight * float(probs[t, nxt])
                totals[t][nxt] += reached
                walk(t + 1, nxt, reached)

    walk(0, 0, 1.0)
    return [[math.log(v) if v > 0 else -math.inf for v in row] for row in totals]


@pytest.mark.parametrize("exact", [False, True])
def test_calculate_alpha_beta(exact: bool) -> None:
    labels = torch.tensor([[0, 1, 0, 2, 0], [0, 1, 0, 1, 0], [0, 1, 0, 0, 0]])
    labels_len = torch.tensor([5, 5, 3])
    table = torch.stack([_transition_rule(row, 5) for row in labels.tolist()])
    np.random.seed(0)
    noise = np.random.normal(size=(3, 6, 5)).astype(np.float32)
    log_pred_label_prob = torch.log_softmax(torch.tensor(noise), axis=2)
    logits_len = torch.tensor([6, 5, 4])

    alpha, beta, log_seq_prob_final = lib.calculate_alpha_beta(
        table, log_pred_label_prob, labels_len, logits_len, exact=exact
    )
    assert alpha.shape == beta.shape == (3, 6, 5) and log_seq_prob_final.shape == (3,)
    for b in range(3):
        frames, states = int(logits_len[b]), int(labels_len[b])
        prefix = _prefix_path_sums(table[b], log_pred_label_prob[b], frames)
        last, prev = prefix[frames - 1][states - 1], prefix[frames - 1][states - 2]
        # exact=False is the reference's max merge of the two final states, exact=True their log-sum.
        expected = math.log(math.exp(last) + math.exp(prev)) if exact else max(last, prev)
        assert float(log_seq_prob_final[b]) == pytest.approx(expected, abs=1e-4)
        # alpha is the forward log-sum up to a per-frame normaliser: equal differences between states.
        for t in range(frames):
            reachable = [s for s in range(states) if prefix[t][s] > -math.inf]
            offsets = [float(alpha[b, t, s]) - prefix[t][s] for s in reachable]
            assert max(offsets) - min(offsets) == pytest.approx(0.0, abs=1e-4)
        # beta starts from the final states: 0 in both at the last valid frame.
        assert float(beta[b, frames - 1, states - 1]) == pytest.approx(0.0, abs=1e-4)
        assert float(beta[b, frames - 1, states - 2]) == pytest.approx(0.0, abs=1e-2)
        # Outside the sequence the entries carry LOG_0 filler.
        assert bool((alpha[b, frames:] < -700).all()) and bool((alpha[b, :, states:] < -700).all())
        assert bool((beta[b, frames:] < -700).all()) and bool((beta[b, :, states:] < -700).all())


def test_sequence_mask() -> None:
    lengths = torch.tensor([3, 0, 5])
    mask = lib.sequence_mask(lengths)
    assert mask.dtype == torch.bool and mask.shape == (3, 5)
    assert mask.tolist() == [[i < n for i in range(5)] for n in (3, 0, 5)]
    as_float = lib.sequence_mask(lengths, maxlen=7, dtype=torch.float32)
    assert as_float.shape == (3, 7) and as_float.sum().item() == 8.0
    # Any leading shape, as tf.sequence_mask.
    assert lib.sequence_mask(torch.tensor([[1], [2]]), maxlen=2).tolist() == [[[True, False]], [[True, True]]]
    assert lib.sequence_mask(torch.tensor([4]), maxlen=torch.tensor(2)).shape == (1, 2)


@pytest.mark.parametrize(
    ("lengths", "maxlen", "message"),
    [
        (torch.tensor([1.0]), None, "lengths must be an integer"),
        ([1, 2], None, "lengths must be an integer"),
        (torch.tensor([-1]), None, "lengths must be >= 0"),
        (torch.tensor([1]), -2, "maxlen must be"),
        (torch.tensor([1]), 2.5, "maxlen must be"),
    ],
)
def test_sequence_mask_rejects_bad_input(lengths: object, maxlen: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lib.sequence_mask(lengths, maxlen)  # type: ignore[arg-type]
