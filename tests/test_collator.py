import numpy as np
import torch

from asr_ctc.data.collator import CTCDataCollator


def test_collator_pads_audio_with_mask_and_labels_with_ignore_index(tiny_processor):
    feats = [
        {"input_values": np.ones(5, dtype=np.float32), "labels": [3, 4], "id": "a"},
        {"input_values": np.full(3, 2.0, dtype=np.float32), "labels": [5, 6, 7, 8], "id": "b"},
    ]
    batch = CTCDataCollator(tiny_processor)(feats)
    assert batch["input_values"].shape == (2, 5) and batch["input_values"].dtype == torch.float32
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_values"][1].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]
    assert batch["labels"].tolist() == [[3, 4, -100, -100], [5, 6, 7, 8]]
    assert batch["utterance_ids"] == ["a", "b"]
