"""Reads from the Hub that fail (no such repo, a private or gated repo, no such revision) end the commands that read
models and datasets from the Hub with exit status 2 and one line naming the flag, the repo and the reason; nothing is
written, and the Hub is left as it was.

The commands: `synfer generate --model`, `synfer generate --au-policy dataset --au-dataset`, `synfer relabel` (a Hub
id in place of the folder, a `--voter` on the Hub) and the training scripts' `--pretrained_model_name_or_path` /
`--revision`. They run in one client process (this file, `python tests/test_hub_read_errors.py <workdir>`, with
`HF_ENDPOINT` at the test Hub and the token of user `tester`), each through its command-line entry point with stderr
captured; it prints one JSON line of observations.
"""

import contextlib
import io
import json
import os
import runpy
import sys
from pathlib import Path

import pytest

import fork_server
from hub_server import client_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MISSING, PRIVATE, GATED, PUBLIC = "tester/no-such-repo", "someone-else/private", "someone-else/gated", "tester/public"
REASONS = {
    MISSING: "no such repo on the Hub (HTTP 404)",
    PRIVATE: "no such repo on the Hub (HTTP 404), or it is private",
    GATED: "the repo is gated (HTTP 403)",
}
GENERATE = ["generate", "--num-samples", "2", "--num-inference-steps", "2", "--height", "16", "--width", "16",
            "--no-progress"]  # fmt: skip
TRAIN = ["--resolution", "16", "--train_batch_size", "2", "--max_train_steps", "1"]
CASES = {
    **{f"generate-model-{kind}": (["synfer", *GENERATE, "--model", repo], "`--model`", repo, REASONS[repo])
       for kind, repo in (("missing", MISSING), ("private", PRIVATE), ("gated", GATED))},
    **{f"generate-au-dataset-{kind}": (["synfer", *GENERATE, "--au-policy", "dataset", "--au-dataset", repo],
                                       "`--au-dataset`", repo, reason)  # datasets' own reasons
       for kind, repo, reason in (("missing", MISSING, "doesn't exist on the Hub or cannot be accessed"),
                                  ("private", PRIVATE, "doesn't exist on the Hub or cannot be accessed"),
                                  ("gated", GATED, "is a gated dataset on the Hub"))},
    "relabel-hub-id": (["synfer", "relabel", PRIVATE], "`FOLDER`", PRIVATE, "download a Hub set first"),
    "relabel-voter-gated": (["synfer", "relabel", "{set}", "--voter", f"classifier:{GATED}"], "`--voter`", GATED,
                            REASONS[GATED]),
    **{f"{script}-{kind}": ([script, "--pretrained_model_name_or_path", repo, "--dataset_name", "{faceworld}", *TRAIN],
                            "`pretrained_model_name_or_path`", repo, REASONS[repo])
       for script in ("train_text_to_image", "train_au_adapter")
       for kind, repo in (("missing", MISSING), ("private", PRIVATE), ("gated", GATED))},
    "train_au_adapter-revision": (["train_au_adapter", "--pretrained_model_name_or_path", PUBLIC, "--revision",
                                   "no-such-branch", "--dataset_name", "{faceworld}", *TRAIN], "`revision`",
                                  "no-such-branch", "has no such revision"),
}  # fmt: skip
"""Case -> (command line, the flag its error line names, the repo it names, the reason it gives)."""


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def observed(hub, tmp_path_factory):
    """The Hub holds a tiny stage-A pipeline, a small FaceWorld set and a classifier, each as a private repo of
    another user, a gated one and (the pipeline) a public one; the client runs every case once."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from synfer_diffusers import EXPRESSIONS, SynFERPipeline
    from synfer_diffusers.data.faceworld import write_faceworld_splits
    from synfer_diffusers.tiny import make_tiny_components

    workdir = tmp_path_factory.mktemp("hub_read_errors")
    SynFERPipeline(**make_tiny_components(seed=0)).save_pretrained(workdir / "pipeline")
    write_faceworld_splits(workdir / "faceworld", num_train=8, num_test=2, seed=0, show_progress=False)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=7,
                          id2label=dict(enumerate(EXPRESSIONS)), label2id=EXPRESSIONS.label2id)  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(workdir / "classifier")
    pipeline, faceworld = _folder_files(workdir / "pipeline"), _folder_files(workdir / "faceworld")
    for repo_id, private, gated in ((PRIVATE, True, False), (GATED, False, True)):
        hub.add_repo("model", repo_id, {**pipeline, **_folder_files(workdir / "classifier")}, private, gated)
        hub.add_repo("dataset", repo_id, faceworld, private, gated)
    hub.add_repo("model", PUBLIC, pipeline)
    before = {key: len(repo.commits) for key, repo in hub.repos.items()}
    env = {**client_env(hub), "SYNFER_DEFAULT_MODEL": str(workdir / "no_default_model")}
    result = fork_server.run([sys.executable, __file__, str(workdir)], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert {key: len(repo.commits) for key, repo in hub.repos.items()} == before  # the Hub as it was
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # its client subprocess imports the HF stack
def test_the_test_hub_answers_gated_and_missing_repos_as_the_hub_does(observed):
    statuses = observed["statuses"]
    assert statuses["gated-info"] == 200 and statuses["gated-card"] == 200  # its page and card are public
    assert statuses["gated-file"] == 403 and statuses["gated-file-anonymous"] == 401
    assert statuses["missing-anonymous"] == 401 and statuses["missing"] == 404
    assert statuses["bad-revision"] == 404


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_hub_read_is_one_line_naming_the_flag_repo_and_reason(observed, case):
    _, flag, repo, reason = CASES[case]
    seen = observed["cases"][case]
    assert seen["code"] == 2 and len(seen["errors"]) == 1 and not seen["traceback"], seen
    (line,) = seen["errors"]
    assert flag in line and repo in line and reason in line, line
    assert not seen["wrote"], seen  # no output folder, the set relabelled untouched


# ----------------------------------------------------------------------------------------------------------
# The client process
# ----------------------------------------------------------------------------------------------------------


def _statuses() -> dict[str, int]:
    import httpx

    endpoint, token = os.environ["HF_ENDPOINT"], {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"}
    urls = {
        "gated-info": (f"/api/models/{GATED}", token), "gated-card": (f"/{GATED}/resolve/main/README.md", token),
        "gated-file": (f"/{GATED}/resolve/main/model_index.json", token),
        "gated-file-anonymous": (f"/{GATED}/resolve/main/model_index.json", {}),
        "missing": (f"/api/models/{MISSING}", token), "missing-anonymous": (f"/api/models/{MISSING}", {}),
        "bad-revision": (f"/api/models/{PUBLIC}/revision/no-such-branch", token),
    }  # fmt: skip
    return {name: httpx.get(endpoint + path, headers=headers).status_code for name, (path, headers) in urls.items()}


def _run(argv: list[str], out: Path) -> dict:
    """Runs one command line (`synfer ...` or a training script) as its entry point does, stderr captured."""
    stderr, code, traceback = io.StringIO(), None, False
    with contextlib.redirect_stderr(stderr):
        try:
            if argv[0] == "synfer":
                from synfer_diffusers.cli import main

                code = main([*argv[1:2], *([] if argv[1] == "relabel" else ["--output-dir", str(out)]), *argv[2:]])
            else:
                sys.argv = [f"{argv[0]}.py", "--output_dir", str(out), *argv[1:]]
                runpy.run_path(str(EXAMPLES / f"{argv[0]}.py"), run_name="__main__")
                code = 0
        except SystemExit as exit_:
            code = exit_.code
        except Exception as error:  # noqa: BLE001 - reported to the test
            traceback = True
            stderr.write(f"Traceback: {type(error).__name__}: {error}\n")
    errors = [line for line in stderr.getvalue().splitlines() if "error:" in line or "Traceback" in line]
    return {"code": code, "errors": errors, "traceback": traceback or "Traceback" in stderr.getvalue(),
            "wrote": out.exists()}  # fmt: skip


def _client(workdir: Path) -> dict:
    import torch

    from synfer_diffusers.cli import main

    torch.set_num_threads(1)
    set_folder = workdir / "set"
    assert main([*GENERATE, "--output-dir", str(set_folder)]) == 0  # a finished set, for relabel
    set_before = _folder_files(set_folder)
    cases = {}
    for name, (argv, *_) in CASES.items():
        argv = [arg.format(set=set_folder, faceworld=workdir / "faceworld") for arg in argv]
        cases[name] = _run(argv, workdir / "out" / name)
        cases[name]["wrote"] |= _folder_files(set_folder) != set_before
    return {"statuses": _statuses(), "cases": cases}


if __name__ == "__main__":
    print(json.dumps(_client(Path(sys.argv[1]))))
