"""Run-level analyses built on :mod:`bind.eval`: pair labels, visiocentrism, checkpoints."""
