"""asr-ctc: the CTC loss from first principles in PyTorch, and the fine-tuning, decoding and forced alignment
of CTC speech encoders (wav2vec2 and its family) around it."""

__version__ = "0.1.0"

from .align import forced_align
from .ctc import CTCLoss, ctc_loss

__all__ = ["CTCLoss", "ctc_loss", "forced_align", "__version__"]
