"""Content fingerprints of model components: what a plan records so that a resume with other weights is refused."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["module_fingerprint", "update_with_component"]


def update_with_component(digest: Any, component: Any) -> None:
    """Feeds a component's public config, weights (a module) or vocabulary (a tokenizer) into `digest`."""
    config = getattr(component, "config", None)
    if config is not None:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        public = {k: v for k, v in config.items() if not k.startswith("_")}  # private keys: paths, set order
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    if isinstance(component, torch.nn.Module):
        for key, tensor in component.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif hasattr(component, "get_vocab"):
        digest.update(json.dumps(component.get_vocab(), sort_keys=True).encode())


def module_fingerprint(module: Any) -> str:
    """sha256 of one component (config and weights, or vocabulary), e.g. a voting classifier."""
    digest = hashlib.sha256()
    update_with_component(digest, module)
    return digest.hexdigest()
