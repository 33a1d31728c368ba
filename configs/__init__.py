"""Packaged YAML configs, addressable by name: ``--config demo`` is ``anchorbind/configs/demo.yaml``.

See :func:`anchorbind.config.resolve_config` and ``anchorbind config list|show``.
"""
