"""diffusers' own pipeline test-suite, vendored from the diffusers repository (it is not in the wheel).

`pipeline_tester.PipelineTesterMixin` is the mixin every diffusers pipeline test class runs; `pipeline_params` holds
its canonical parameter sets and `testing_utils` the helpers it imports. `sd_function_tester.SDFunctionTesterMixin`
adds the tests of the `StableDiffusionMixin` helpers (VAE slicing and tiling, FreeU, fused QKV projections). Each
file names the diffusers commit and path it comes from, and what was changed. Use it as diffusers does: a
`unittest.TestCase` subclass that sets `pipeline_class`, `params`, `batch_params` and defines
`get_dummy_components()` / `get_dummy_inputs(device, seed)`.
"""
