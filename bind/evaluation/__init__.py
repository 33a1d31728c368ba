"""Run-level analyses built on :mod:`anchorbind.metrics`: pair labels, visiocentrism, checkpoints."""
