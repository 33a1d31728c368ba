"""Text modality: any transformers encoder (default: the packaged MiniLM-L6), mean pooling, head."""

from anchorbind.modalities.text.config import TextConfig
from anchorbind.modalities.text.plugin import TextPlugin, mean_pool
from anchorbind.modalities.text.processor import TextProcessor

__all__ = ["TextConfig", "TextPlugin", "TextProcessor", "mean_pool"]
