"""diffusers' own pipeline test-suite (`PipelineTesterMixin`, vendored in `diffusers_harness/`) on `SynFERPipeline`
and, as the peer, on the stock `StableDiffusionPipeline` built from the same tiny parts (the peer's UNet is the
plain UNet that SynFER's AU UNet is built around). A test that passes for the peer and fails for SynFER marks a
departure from the diffusers text-to-image pipeline contract. Both classes also run diffusers'
`SDFunctionTesterMixin` (VAE slicing and tiling, FreeU, fused QKV projections), as diffusers' SD 2 and SDXL fast tests
do. The peer runs when diffusers, the harness or the tiny parts changed (`stock_peer.py`); its last passing run is
recorded.

The classes are configured as diffusers' `StableDiffusionPipelineFastTests` configures itself (`TEXT_TO_IMAGE_PARAMS`,
`TEXT_TO_IMAGE_BATCH_PARAMS`, 2 steps, `guidance_scale=6.0`, `output_type="np"`); on a CPU the accelerator-only
tests of the mixin (float16, offloading, xformers, group offloading, `to_device`) skip with diffusers' own reason.
"""

import unittest
from unittest import mock

import diffusers
import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffusers_harness.pipeline_params import (
    TEXT_TO_IMAGE_BATCH_PARAMS,
    TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS,
    TEXT_TO_IMAGE_PARAMS,
)
from diffusers_harness.pipeline_tester import PipelineTesterMixin
from diffusers_harness.sd_function_tester import SDFunctionTesterMixin
from diffusers_harness.stable_diffusion_fast_tests import StableDiffusionFastTestsMixin
from stock_peer import fingerprint, recorded
from synfer_diffusers import SynFERPipeline
from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components


def dummy_text_to_image_inputs(device: str, seed: int = 0) -> dict:
    """The dummy call of diffusers' `StableDiffusionPipelineFastTests.get_dummy_inputs`."""
    mps = str(device).startswith("mps")
    generator = torch.manual_seed(seed) if mps else torch.Generator(device=device).manual_seed(seed)
    return {
        "prompt": "A painting of a squirrel eating a burger",
        "generator": generator,
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
        "output_type": "np",
    }


@pytest.mark.stock_peer
class TestStableDiffusionPeer(
    StableDiffusionFastTestsMixin, SDFunctionTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    """The stock pipeline on the tiny parts: the reference that shows each mixin test can pass on them."""

    pipeline_class = StableDiffusionPipeline
    params = TEXT_TO_IMAGE_PARAMS
    batch_params = TEXT_TO_IMAGE_BATCH_PARAMS
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    test_layerwise_casting = True
    test_group_offloading = True

    def get_dummy_components(self):
        parts = make_tiny_components()
        return {
            "vae": parts["vae"],
            "text_encoder": parts["text_encoder"],
            "tokenizer": parts["tokenizer"],
            "unet": make_tiny_base_unet(),
            "scheduler": parts["scheduler"],
            "safety_checker": None,
            "feature_extractor": None,
            "image_encoder": None,
            "requires_safety_checker": False,
        }

    def get_dummy_inputs(self, device, seed=0):
        return dummy_text_to_image_inputs(device, seed)


class TestSynFERPipelineConformance(
    StableDiffusionFastTestsMixin, SDFunctionTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    """`SynFERPipeline` with the tiny AU UNet, asked for an expression (EMFACS prototype AUs, enriched prompt)."""

    pipeline_class = SynFERPipeline
    params = TEXT_TO_IMAGE_PARAMS | {"expression", "action_units", "au_scale"}
    batch_params = TEXT_TO_IMAGE_BATCH_PARAMS | {"expression"}
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    test_layerwise_casting = True
    test_group_offloading = True

    def get_dummy_components(self):
        # Optional components are passed as None, as diffusers' SD tests pass `safety_checker=None`.
        optional = dict.fromkeys(SynFERPipeline._optional_components)
        return {**make_tiny_components(), **optional}

    def get_dummy_inputs(self, device, seed=0):
        return {**dummy_text_to_image_inputs(device, seed), "expression": "happy"}

    def test_encode_prompt_works_in_isolation(self):
        # The mixin finds `encode_prompt`'s return names (diffusers' `ReturnNameVisitor`) in the source of
        # `diffusers.pipelines.<class name>`, where an out-of-tree pipeline is not: expose SynFERPipeline there.
        # It compares `pipe(prompt=p)` with `pipe(prompt_embeds=encode_prompt(p))`; SynFER rewrites `prompt` with the
        # expression's words (prompt enrichment) but uses given `prompt_embeds` as they are (documented), so the
        # comparison is made with enrichment off.
        inputs = self.get_dummy_inputs

        def unenriched_inputs(device, seed=0):
            return {**inputs(device, seed), "enrich_prompt": False}

        with (
            mock.patch.object(diffusers.pipelines, SynFERPipeline.__name__, SynFERPipeline, create=True),
            mock.patch.object(self, "get_dummy_inputs", unenriched_inputs),
        ):
            super().test_encode_prompt_works_in_isolation()


def test_the_stock_peer_passed_on_these_versions_and_parts():
    """The stock peer's last passing run is recorded for the installed diffusers, transformers and torch and the
    current harness, conformance module and tiny parts; otherwise it ran in this session (not deselected) and must be
    recorded: `python tests/stock_peer.py`."""
    message = "the stock peer is not recorded for these versions and parts: run `python tests/stock_peer.py`"
    assert recorded() == fingerprint(), message + " (it runs the peer alone and records it when every test passes)"
