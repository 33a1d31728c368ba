"""Training: the loop, its config, logging, the optimiser and atomic checkpoints.

``python -m anchorbind.train`` and ``accelerate launch -m anchorbind.train`` run :func:`main`.

* :mod:`~anchorbind.train.loop` -- set-up and the step loop (accelerate, global-batch loss)
* :mod:`~anchorbind.train.data_check` -- before the first step: plugins without data, the anchor
  cache's identity
* :mod:`~anchorbind.train.config` -- the training config dataclasses. The core's
  :mod:`anchorbind.config` is the same concept one level down: how any config is parsed.
* :mod:`~anchorbind.train.log` -- TensorBoard and CSV logging on the main process
* :mod:`~anchorbind.train.optim` -- AdamW with warmup and cosine decay
* :mod:`~anchorbind.train.checkpoint` -- atomic, resumable checkpoints
"""

from anchorbind.train.config import TrainConfig, load_train_config
from anchorbind.train.loop import NonFiniteLossError, main, train

__all__ = ["NonFiniteLossError", "TrainConfig", "load_train_config", "main", "train"]
