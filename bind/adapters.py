"""Freezing a trunk or adding LoRA adapters to it (peft): how a plugin applies its ``tuning``.

Kept apart from :mod:`anchorbind.tuning` (the config fields) so that the plugin base class can
use it without importing the config module that builds on the plugin's own config class.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anchorbind.errors import ConfigError

__all__ = ["add_lora_adapters", "freeze"]


def freeze(module: nn.Module) -> nn.Module:
    """No weight of ``module`` requires grad; it is put in eval mode (the plugin keeps it there)."""
    module.requires_grad_(False)
    return module.eval()


def add_lora_adapters(module: nn.Module, config: Any, *, where: str, what: str = "the trunk") -> nn.Module:
    """Inject peft LoRA adapters into ``module`` in place; only the adapters require grad.

    ``peft.inject_adapter_in_model`` keeps the module's own class and names (``qkv`` becomes
    ``qkv.base_layer`` plus ``qkv.lora_A``/``lora_B``), so weights saved without adapters load
    into the base layers by name.

    Raises:
        ConfigError: naming ``where`` (the config section) and ``what`` (the module), when no
            module matches ``lora_target_modules``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), bias="none")
    try:
        module = inject_adapter_in_model(lora, module)
    except ValueError as err:
        raise ConfigError(f"{where}.lora_target_modules={config.lora_target_modules} do not fit {what}: "
                          f"{err}") from None
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)
    return module
