"""The training data path: manifests -> a cached split index -> a dataset that decodes audio per item.

:mod:`~asr_ctc.data.manifest` reads local manifests (TSV, CSV, JSONL); :mod:`~asr_ctc.data.index` builds
the memory-mapped index of a split (headers and normalised transcripts, never samples);
:mod:`~asr_ctc.data.dataset` filters it and decodes each utterance when a batch needs it
(:mod:`~asr_ctc.data.audio`). :mod:`~asr_ctc.data.text` normalises transcripts, :mod:`~asr_ctc.data.vocab`
builds the vocabulary and processor, :mod:`~asr_ctc.data.collator` pads batches. Making data (the synthetic
eSpeak corpus) is apart, in :mod:`asr_ctc.corpus`.
"""
