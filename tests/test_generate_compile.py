"""`synfer generate --compile --channels-last`: regional `torch.compile` of the UNet's repeated blocks and the
channels_last memory format reach the pipeline, are recorded in the plan (a resume with other values is refused),
keep image i the same alone or in a batch, and `--compile` is refused, naming the flag, where torch cannot compile.
Tiny random stand-in, 16x16 pixels, 2 steps."""

import json

import numpy as np
import pytest
import torch
import torch._inductor.config

from synfer_diffusers.cli import main
from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset, pipeline_inputs, plan_sample
from synfer_diffusers.generate.model import configure_pipeline
from synfer_diffusers.pipelines.synfer.pipeline_synfer import SynFERPipeline
from synfer_diffusers.tiny import make_tiny_components
from synthetic_sets import CLI_ARGS, SMALL, _load

OPTIONS = {"compile": True, "channels_last": True}
pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")


def _pipeline() -> SynFERPipeline:
    pipe = SynFERPipeline(**make_tiny_components(seed=0, sample_size=8))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(folder, pipe, resume=False, **options):
    config = SyntheticSetConfig(num_samples=2, shard_size=2, **SMALL, **options)
    return generate_synthetic_dataset(config, folder, pipeline=pipe, batch_size=2, resume=resume, show_progress=False,
                                      process_index=0, num_processes=1)  # fmt: skip


@pytest.mark.slow
def test_compile_and_channels_last_reach_the_unet_and_the_plan_and_keep_batch_equal_to_single(tmp_path):
    pipe = _pipeline()
    folder = tmp_path / "set"
    assert _generate(folder, pipe, **OPTIONS).complete
    blocks = [m for m in pipe.unet.modules() if type(m).__name__ in pipe.unet._repeated_blocks]
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    for module in (pipe.unet, pipe.vae):
        weight = next(p for p in module.parameters() if p.ndim == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last)
    plan = json.loads((folder / "plan.json").read_text())
    assert {name: plan[name] for name in OPTIONS} == OPTIONS

    # image 1 of the set (a batch of 2) made alone by the compiled pipeline, and by an eager one
    config = SyntheticSetConfig(num_samples=2, shard_size=2, **SMALL)
    stored = np.asarray(_load(folder)["image"][1], dtype=int)
    for made_by in (pipe, _pipeline()):
        alone = made_by(**pipeline_inputs(config, [plan_sample(config, 1, made_by.au_space)])).images[0]
        assert np.abs(np.asarray(alone, dtype=int) - stored).max() <= 1  # float rounding: one grey level at most

    for name in OPTIONS:
        with pytest.raises(FileExistsError, match="different plan"):
            _generate(folder, _pipeline(), resume=True, **{**OPTIONS, name: False})
    assert _generate(folder, pipe, resume=True, **OPTIONS).shards_written == 0


@pytest.fixture
def no_compiler():
    """Inductor pointed at a C++ compiler that does not exist, its caches off and dynamo's reset: as on a machine
    without a compiler."""
    torch._dynamo.reset()
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",), "fx_graph_cache": False}):
        yield
    torch._dynamo.reset()


def test_compile_is_refused_where_torch_cannot_compile(no_compiler, tmp_path, capsys):
    pipe = _pipeline()
    with pytest.raises(ValueError, match=r"`compile`: torch cannot compile for cpu .*no-such-c\+\+"):
        configure_pipeline(pipe, SyntheticSetConfig(compile=True), torch.device("cpu"))
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in pipe.unet.modules())

    with pytest.raises(SystemExit) as error:
        main(["generate", "--output-dir", str(tmp_path / "out"), "--num-samples", "2", "--compile", *CLI_ARGS])
    assert error.value.code == 2 and "error: `--compile`: torch cannot compile" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_options_must_be_bools(name):
    with pytest.raises(ValueError, match=f"`{name}` must be a bool"):
        SyntheticSetConfig(**{name: "yes"})
