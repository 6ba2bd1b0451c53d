# Copyright 2026 HuggingFace Inc.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
# Excerpt vendored from huggingface/diffusers@58eb52c0803ea9af3abec60841c2a093bdf1f951,
# tests/testing_utils.py: the helpers that `pipeline_tester.py` and `sd_function_tester.py` import (device selection,
# skip decorators, `CaptureLogger`, `backend_empty_cache`), copied verbatim between the "BEGIN/END VERBATIM"
# markers, each giving its line range in the source file.
# Modifications: the import block is reduced to the names this excerpt uses (line 120, an import only other
# helpers use, is left out too); of the backend dispatch tables (lines 1502-1574) only `BACKEND_EMPTY_CACHE` is
# kept, without the torch-neuronx entries. Device selection is unchanged: `DIFFUSERS_TEST_DEVICE` wins, else CUDA,
# XPU, neuron or MPS when present, else "cpu".
"""Test helpers from diffusers' `tests/testing_utils.py` needed by [`PipelineTesterMixin`] and
[`SDFunctionTesterMixin`]."""

import importlib
import importlib.metadata
import logging
import os
from io import StringIO
from typing import Callable

import numpy as np
import pytest
from diffusers.utils.import_utils import is_accelerate_available, is_torch_available, is_torch_neuronx_available
from diffusers.utils.logging import get_logger
from numpy.linalg import norm
from packaging import version

# ---------------------------------------------------------------- BEGIN VERBATIM (lines 74-74)
logger = get_logger(__name__)
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 78-118)
if is_torch_available():
    import torch

    # Set a backend environment variable for any extra module import required for a custom accelerator
    if "DIFFUSERS_TEST_BACKEND" in os.environ:
        backend = os.environ["DIFFUSERS_TEST_BACKEND"]
        try:
            _ = importlib.import_module(backend)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                f"Failed to import `DIFFUSERS_TEST_BACKEND` '{backend}'! This should be the name of an installed module \
                    to enable a specified backend.):\n{e}"
            ) from e

    if "DIFFUSERS_TEST_DEVICE" in os.environ:
        torch_device = os.environ["DIFFUSERS_TEST_DEVICE"]
        try:
            # try creating device to see if provided device is valid
            _ = torch.device(torch_device)
        except RuntimeError as e:
            raise RuntimeError(
                f"Unknown testing device specified by environment variable `DIFFUSERS_TEST_DEVICE`: {torch_device}"
            ) from e
        logger.info(f"torch_device overrode to {torch_device}")
    else:
        if torch.cuda.is_available():
            torch_device = "cuda"
        elif torch.xpu.is_available():
            torch_device = "xpu"
        elif is_torch_neuronx_available() and hasattr(torch, "neuron") and torch.neuron.is_available():
            torch_device = torch.neuron.current_device()
        else:
            torch_device = "cpu"
        is_torch_higher_equal_than_1_12 = version.parse(
            version.parse(torch.__version__).base_version
        ) >= version.parse("1.12")

        if is_torch_higher_equal_than_1_12:
            # Some builds of torch 1.12 don't have the mps backend registered. See #892 for more details
            mps_backend_registered = hasattr(torch.backends, "mps")
            torch_device = "mps" if (mps_backend_registered and torch.backends.mps.is_available()) else torch_device
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 195-199)
def numpy_cosine_similarity_distance(a, b):
    similarity = np.dot(a, b) / (norm(a) * norm(b))
    distance = 1.0 - similarity.mean()

    return distance
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 505-509)
def require_torch(test_case):
    """
    Decorator marking a test that requires PyTorch. These tests are skipped when PyTorch isn't installed.
    """
    return pytest.mark.skipif(not is_torch_available(), reason="test requires PyTorch")(test_case)
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 565-567)
def require_torch_accelerator(test_case):
    """Decorator marking a test that requires an accelerator backend and PyTorch."""
    return pytest.mark.skipif(torch_device == "cpu", reason="test requires accelerator+PyTorch")(test_case)
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 701-703)
def skip_mps(test_case):
    """Decorator marking a test to skip if torch_device is 'mps'"""
    return pytest.mark.skipif(torch_device == "mps", reason="test requires non 'mps' device")(test_case)
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 728-733)
def require_accelerator(test_case):
    """
    Decorator marking a test that requires a hardware accelerator backend. These tests are skipped when there are no
    hardware accelerator available.
    """
    return pytest.mark.skipif(torch_device == "cpu", reason="test requires a hardware accelerator")(test_case)
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 828-838)
def require_accelerate_version_greater(accelerate_version):
    def decorator(test_case):
        correct_accelerate_version = is_accelerate_available() and version.parse(
            version.parse(importlib.metadata.version("accelerate")).base_version
        ) > version.parse(accelerate_version)
        return pytest.mark.skipif(
            not correct_accelerate_version,
            reason=f"Test requires accelerate with the version greater than {accelerate_version}.",
        )(test_case)

    return decorator
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 1388-1424)
class CaptureLogger:
    """
    Args:
    Context manager to capture `logging` streams
        logger: 'logging` logger object
    Returns:
        The captured output is available via `self.out`
    Example:
    ```python
    >>> from diffusers import logging
    >>> from diffusers.utils.testing_utils import CaptureLogger

    >>> msg = "Testing 1, 2, 3"
    >>> logging.set_verbosity_info()
    >>> logger = logging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.py")
    >>> with CaptureLogger(logger) as cl:
    ...     logger.info(msg)
    >>> assert cl.out, msg + "\n"
    ```
    """

    def __init__(self, logger):
        self.logger = logger
        self.io = StringIO()
        self.sh = logging.StreamHandler(self.io)
        self.out = ""

    def __enter__(self):
        self.logger.addHandler(self.sh)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.sh)
        self.out = self.io.getvalue()

    def __repr__(self):
        return f"captured: {self.out}\n"
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 1502, 1515-1522)
if is_torch_available():
    # Function definitions
    BACKEND_EMPTY_CACHE = {
        "cuda": torch.cuda.empty_cache,
        "xpu": torch.xpu.empty_cache,
        "cpu": None,
        "mps": torch.mps.empty_cache,
        "default": None,
    }
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 1577-1586)
# This dispatches a defined function according to the accelerator from the function definitions.
def _device_agnostic_dispatch(device: str, dispatch_table: dict[str, Callable], *args, **kwargs):
    fn = dispatch_table[device] if device in dispatch_table else dispatch_table["default"]

    # Some device agnostic functions return values. Need to guard against 'None' instead at
    # user level
    if not callable(fn):
        return fn

    return fn(*args, **kwargs)
# ---------------------------------------------------------------- END VERBATIM


# ---------------------------------------------------------------- BEGIN VERBATIM (lines 1598-1599)
def backend_empty_cache(device: str):
    return _device_agnostic_dispatch(device, BACKEND_EMPTY_CACHE)
# ---------------------------------------------------------------- END VERBATIM
