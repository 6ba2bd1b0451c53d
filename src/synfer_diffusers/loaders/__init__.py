"""Loaders that put SynFER parts on other checkpoints (the portable AU adapter)."""

from .au_adapter import (
    AU_ADAPTER_CONFIG_NAME,
    AU_ADAPTER_WEIGHTS_NAME,
    AUAdapterLoaderMixin,
    cross_attention_layout,
    export_au_adapter,
    load_au_adapter,
    save_au_adapter,
)

__all__ = [
    "AU_ADAPTER_CONFIG_NAME",
    "AU_ADAPTER_WEIGHTS_NAME",
    "AUAdapterLoaderMixin",
    "cross_attention_layout",
    "export_au_adapter",
    "load_au_adapter",
    "save_au_adapter",
]
