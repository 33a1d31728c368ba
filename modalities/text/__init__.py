"""Text modality: any transformers encoder (default: the packaged MiniLM-L6), mean pooling, head."""

from anchorbind.modalities.text.config import TextConfig
from anchorbind.modalities.text.plugin import TextPlugin, mean_pool

__all__ = ["TextConfig", "TextPlugin", "mean_pool"]
