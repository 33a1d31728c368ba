"""Training objectives.

* :mod:`~anchorbind.losses.binding` -- the global-batch InfoNCE that binds each plugin to the anchor
  (and optional direct plugin–plugin pairs); owns the distributed gather.
* :mod:`~anchorbind.losses.gap_regularizers` -- losses that close the modality gap.
"""

from anchorbind.losses.binding import BindingLoss, info_nce

__all__ = ["BindingLoss", "info_nce"]
