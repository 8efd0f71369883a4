"""asr-ctc: the CTC loss from first principles in PyTorch, and wav2vec2 fine-tuning around it."""

__version__ = "0.1.0"

from .align import forced_align
from .ctc import CTCLoss, ctc_loss

__all__ = ["CTCLoss", "ctc_loss", "forced_align", "__version__"]
