"""Corpus preparation (``asr-ctc-prepare``): public corpus layouts to manifests, manifests to shards.

One module per recipe, in the spirit of lhotse's ``lhotse prepare <corpus>`` recipes:

* :mod:`~asr_ctc.prepare.librispeech` -- a LibriSpeech tree (``<subset>/<spk>/<chapter>/*.flac`` beside
  ``<spk>-<chapter>.trans.txt``) to one manifest per subset;
* :mod:`~asr_ctc.prepare.commonvoice` -- a Common Voice language folder (``clips/*.mp3`` beside
  ``train.tsv``/``dev.tsv``/``test.tsv``) to one manifest per split;
* :mod:`~asr_ctc.prepare.table` -- any CSV/TSV/JSONL table with named audio and transcript columns, its
  audio paths resolved against a chosen folder;
* :mod:`~asr_ctc.prepare.shards` -- any manifest to WebDataset shards (``shard-000000.tar`` ...).

Every manifest written is the project's TSV format (:mod:`asr_ctc.data.manifest`): ``id``, ``audio``
(relative to the manifest), ``text`` as the corpus spells it (case and punctuation are the training
config's business), then the corpus's other fields. Files are written atomically.
"""

from asr_ctc.prepare._common import PrepareError
from asr_ctc.prepare.commonvoice import prepare_commonvoice
from asr_ctc.prepare.librispeech import prepare_librispeech
from asr_ctc.prepare.shards import write_shards
from asr_ctc.prepare.table import prepare_table

__all__ = ["PrepareError", "prepare_commonvoice", "prepare_librispeech", "prepare_table", "write_shards"]
