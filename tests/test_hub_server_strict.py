"""The Hub test server is as strict as the Hub where it matters, seen through the real `huggingface_hub` client.

Tokens (401, 403, private repos), card metadata validation, per-repo LFS storage, parent-commit conflicts (412) and
injected faults (429 with `Retry-After`, 5xx on preupload, LFS batch and LFS upload). The client runs in one
subprocess (this file, `python tests/test_hub_server_strict.py <workdir>`, importing only huggingface_hub) and prints
one JSON line of observations; what only the server sees (request times, upload counts) is read from it here.
"""

import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import fork_server
from hub_server import arm_fault, client_env

OTHER_TOKEN = "hf_other_token"  # user "someone-else" in hub_server.TOKENS
BAD_CARD = """---
license: not-a-licence
tags: synthetic
task_categories: [image-classification, face-magic]
size_categories: [huge]
dataset_info:
  features:
  - name: image
  splits:
  - name: train
    num_examples: many
configs:
- data_files: 3
---
# A card
"""
GOOD_CARD = """---
license: apache-2.0
tags: [synfer, synthetic]
task_categories: [image-classification, text-to-image]
size_categories: [n<1K]
dataset_info:
  features:
  - name: image
    dtype: image
  - name: action_units
    list: float32
    length: 12
  splits:
  - name: train
    num_bytes: 100
    num_examples: 4
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# A card
"""


@pytest.fixture(scope="module")
def observed(hub, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("strict_client")
    result = fork_server.run([sys.executable, __file__, str(workdir)], env=client_env(hub),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # its client subprocess imports the HF stack
def test_tokens_are_checked(hub, observed):
    assert observed["whoami"] == ["tester", "someone-else"]
    assert observed["no_token"][0] == 401 and observed["bad_token"][0] == 401
    assert "Invalid credentials" in observed["bad_token"][1]
    status, message = observed["create_in_other_namespace"]
    assert status == 403 and "someone-else" in message
    assert observed["upload_to_other_repo"][0] == 403
    assert set(hub.files("model", "someone-else/theirs")) == {".gitattributes"}  # nothing committed
    assert len(hub.calls("POST", "someone-else/theirs/preupload")) == 1  # a 403 is not retried


def test_private_repos_are_hidden(observed):
    assert observed["private_as_other_user"][0] == 404
    assert observed["private_anonymous"][0] == 401
    assert observed["private_as_owner"] == "someone-else/secret"


def test_card_metadata_is_validated_like_the_hub(hub, observed):
    message = observed["bad_card"]
    assert message.startswith("Invalid metadata in README.md")
    for error in ('"license" must be one of', '"tags" must be an array', '"task_categories[1]" must be one of',
                  '"size_categories[0]" must be one of', '"dataset_info.features[0]" must contain at least one of',
                  '"dataset_info.splits[0].num_examples" must be a number', '"configs[0].config_name" is required',
                  '"configs[0].data_files" must be one of'):  # fmt: skip
        assert error in message, (error, message)
    assert observed["good_card"] is True
    assert hub.files("dataset", "tester/cards")["README.md"] == GOOD_CARD.encode()  # the bad one never landed
    assert hub.num_commits("dataset", "tester/cards") == 2  # creation + the good card


def test_a_commit_with_an_invalid_card_is_refused_even_without_validate_yaml(hub, observed):
    status, body = _raw_commit(hub, "dataset", "tester/cards", [
        {"key": "file", "value": {"path": "README.md", "content": base64.b64encode(BAD_CARD.encode()).decode(),
                                  "encoding": "base64"}}])  # fmt: skip
    assert status == 400 and '"license" must be one of' in json.loads(body)["error"]


def test_lfs_storage_is_per_repo(hub, observed):
    assert len(hub.calls("PUT", "/_lfs/model/tester/lfs-a/")) == 1
    assert len(hub.calls("PUT", "/_lfs/model/tester/lfs-b/")) == 1  # B stores its own copy of the same object
    oid = hub.repo("model", "tester/lfs-a").commits[-1].files["weights.safetensors"].sha256
    status, body = _raw_commit(hub, "model", "tester/lfs-c", [
        {"key": "lfsFile", "value": {"path": "weights.safetensors", "algo": "sha256", "oid": oid, "size": 4096}}])  # fmt: skip
    assert status == 422 and "does not exist in tester/lfs-c" in json.loads(body)["error"]


def test_binary_files_must_go_through_lfs(hub, observed):
    """The Hub refuses a binary file (a `.png`, or any content that is not text) committed inline, and `preupload`
    tells the client to send such files through LFS, which huggingface_hub does."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    for path, data in (("preview.png", png), ("blob.dat", b"\0\1\2 binary")):
        content = base64.b64encode(data).decode()
        operation = {"key": "file", "value": {"path": path, "content": content, "encoding": "base64"}}
        status, body = _raw_commit(hub, "dataset", "tester/cards", [operation])
        assert status == 400 and "contains binary files" in json.loads(body)["error"], (path, body)
    assert observed["upload_modes"] == {"preview.png": "lfs", "blob.dat": "lfs", "notes.txt": "regular"}
    files = hub.repo("model", "tester/binary").commits[-1].files
    assert files["preview.png"].lfs and files["blob.dat"].lfs and not files["notes.txt"].lfs


def test_deleting_a_file_that_is_not_there_answers_404(hub, observed):
    before = hub.num_commits("dataset", "tester/cards")
    status, body = _raw_commit(hub, "dataset", "tester/cards", [{"key": "deletedFile", "value": {"path": "gone.txt"}}])
    assert status == 404 and "gone.txt" in json.loads(body)["error"]
    assert hub.num_commits("dataset", "tester/cards") == before  # nothing applied


def test_a_dropped_answer_follows_an_applied_commit(hub, observed):
    """`drop`: the commit lands, the client sees a dropped connection (what our pushes must retry idempotently)."""
    assert observed["dropped_commit"].startswith("RemoteProtocolError")
    assert hub.files("model", "tester/dropped")["a.txt"] == b"a"
    assert [c.status for c in hub.calls("POST", "tester/dropped/commit")] == [0]


def test_parent_commit_conflict_answers_412(observed):
    assert observed["stale_parent"][0] == 412
    assert "A commit has happened since" in observed["stale_parent"][1]
    assert observed["current_parent"] is True


def test_huggingface_hub_honours_retry_after_on_preupload(hub, observed):
    calls = hub.calls("POST", "tester/rate-limited/preupload")[:2]  # a.txt's
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].time - calls[0].time >= 1.0  # Retry-After: 1 (the client waits Retry-After + 1 s)


def test_huggingface_hub_does_not_retry_a_commit(hub, observed):
    """Why our pushes wrap each commit in `call_with_retries`: `create_commit` sends its POST once."""
    assert observed["commit_429"][0] == 429
    assert [c.status for c in hub.calls("POST", "tester/rate-limited/commit")] == [200, 429]


def test_preupload_and_lfs_faults_are_retried_by_huggingface_hub(hub, observed):
    assert observed["faulty_upload"] is True
    assert [c.status for c in hub.calls("POST", "tester/faulty/preupload")] == [503, 200]
    assert [c.status for c in hub.calls("POST", "tester/faulty.git/info/lfs/objects/batch")] == [500, 200]
    assert [c.status for c in hub.calls("PUT", "/_lfs/model/tester/faulty/")] == [502, 200]


def _raw_commit(hub, repo_type: str, repo_id: str, operations: list[dict]) -> tuple[int, str]:
    """POSTs an NDJSON commit by hand (what a client that skips the checks would send): `(status, body)`."""
    lines = [{"key": "header", "value": {"summary": "raw", "description": ""}}, *operations]
    prefix = "datasets" if repo_type == "dataset" else "models"
    request = urllib.request.Request(
        f"{hub.url}/api/{prefix}/{repo_id}/commit/main", method="POST",
        data=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
        headers={"Authorization": "Bearer hf_test_token", "Content-Type": "application/x-ndjson"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# ----------------------------------------------------------------------------------------------------------
# The client process
# ----------------------------------------------------------------------------------------------------------


def _status(call) -> tuple[int | None, str]:
    """`(HTTP status, message)` of the error `call()` raises (`(None, "")` if it does not)."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - reported to the test
        return getattr(getattr(error, "response", None), "status_code", None), str(error)
    return None, ""


def _client(workdir: Path) -> dict:
    from huggingface_hub import CommitOperationAdd, HfApi

    api, other, anonymous = HfApi(), HfApi(token=OTHER_TOKEN), HfApi(token=False)
    weights = bytes(range(256)) * 16
    seen = {"whoami": [api.whoami()["name"], other.whoami()["name"]]}
    seen["no_token"] = _status(lambda: anonymous.create_repo("tester/anonymous"))
    seen["bad_token"] = _status(lambda: HfApi(token="hf_bogus").create_repo("tester/bogus"))
    seen["create_in_other_namespace"] = _status(lambda: api.create_repo("someone-else/mine"))
    other.create_repo("someone-else/theirs")
    seen["upload_to_other_repo"] = _status(
        lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="someone-else/theirs")
    )
    other.create_repo("someone-else/secret", private=True)
    seen["private_as_other_user"] = _status(lambda: api.repo_info("someone-else/secret"))
    seen["private_anonymous"] = _status(lambda: anonymous.repo_info("someone-else/secret"))
    seen["private_as_owner"] = other.repo_info("someone-else/secret").id

    api.create_repo("tester/cards", repo_type="dataset")
    seen["bad_card"] = _status(lambda: api.upload_file(path_or_fileobj=BAD_CARD.encode(), path_in_repo="README.md",
                                                       repo_id="tester/cards", repo_type="dataset"))[1]  # fmt: skip
    api.upload_file(path_or_fileobj=GOOD_CARD.encode(), path_in_repo="README.md", repo_id="tester/cards",
                    repo_type="dataset")  # fmt: skip
    seen["good_card"] = True

    for name in ("tester/lfs-a", "tester/lfs-b"):
        api.create_repo(name)
        api.upload_file(path_or_fileobj=weights, path_in_repo="weights.safetensors", repo_id=name)
    api.create_repo("tester/lfs-c")  # for a commit that names repo A's object without uploading it

    api.create_repo("tester/parents")
    head = api.repo_info("tester/parents").sha
    api.upload_file(path_or_fileobj=b"one", path_in_repo="one.txt", repo_id="tester/parents")
    operations = [CommitOperationAdd("two.txt", b"two")]
    seen["stale_parent"] = _status(lambda: api.create_commit("tester/parents", operations, commit_message="stale",
                                                             parent_commit=head))  # fmt: skip
    current = api.repo_info("tester/parents").sha
    api.create_commit("tester/parents", [CommitOperationAdd("two.txt", b"two")], commit_message="current",
                      parent_commit=current)  # fmt: skip
    seen["current_parent"] = "two.txt" in api.list_repo_files("tester/parents")

    api.create_repo("tester/binary")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    additions = [CommitOperationAdd(path, data) for path, data in
                 (("preview.png", png), ("blob.dat", b"\0\1\2 binary"), ("notes.txt", b"plain text"))]  # fmt: skip
    api.create_commit("tester/binary", additions, commit_message="binary files")
    seen["upload_modes"] = {op.path_in_repo: op._upload_mode for op in additions}

    api.create_repo("tester/dropped")
    arm_fault("commit", times=1, drop=True)
    try:
        api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="tester/dropped")
        seen["dropped_commit"] = ""
    except Exception as error:  # noqa: BLE001 - reported to the test
        seen["dropped_commit"] = f"{type(error).__name__}: {error}"

    api.create_repo("tester/rate-limited")
    arm_fault("preupload", times=1, status=429, retry_after=1)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="tester/rate-limited")
    arm_fault("commit", times=1, status=429, retry_after=1)
    seen["commit_429"] = _status(
        lambda: api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="tester/rate-limited")
    )

    api.create_repo("tester/faulty")
    for endpoint, status in (("preupload", 503), ("lfs-batch", 500), ("lfs-upload", 502)):
        arm_fault(endpoint, times=1, status=status)
    api.upload_file(path_or_fileobj=weights, path_in_repo="weights.safetensors", repo_id="tester/faulty")
    seen["faulty_upload"] = api.hf_hub_download("tester/faulty", "weights.safetensors", cache_dir=str(workdir))
    seen["faulty_upload"] = Path(seen["faulty_upload"]).read_bytes() == weights
    return seen


if __name__ == "__main__":
    print(json.dumps(_client(Path(sys.argv[1]))))


def _library_errors(card: str) -> list[str]:
    """The fields of `card`'s metadata that the `datasets` library's own readers refuse: `configs` (its
    `MetadataConfigs` check of `data_files`), `dataset_info` (`DatasetInfo._from_yaml_dict`, features included) and
    `size_categories` (the list `datasets` ships, `datasets/utils/resources/size_categories.json`)."""
    import datasets
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    data = DatasetCard(card).data
    errors = []
    for field, read in (("configs", MetadataConfigs.from_dataset_card_data),
                        ("dataset_info", DatasetInfosDict.from_dataset_card_data)):  # fmt: skip
        try:
            read(data)
        except Exception:  # noqa: BLE001  (any refusal of the library's reader)
            errors.append(field)
    sizes = json.loads((Path(datasets.__file__).parent / "utils/resources/size_categories.json").read_text())
    if not set(data.get("size_categories") or []) <= set(sizes):
        errors.append("size_categories")
    return errors


def test_card_rules_agree_with_the_libraries_statement_of_the_hub_rules(reference):
    """The server's rules (`hub_card_rules.py`) are checked against rules they did not write: each field of a card
    that the `datasets` library's readers refuse, the server refuses; the server's size categories are the ones
    `datasets` ships; and the dataset card `synfer generate` writes passes both."""
    import datasets

    from hub_card_rules import SIZE_CATEGORIES, card_errors

    shipped = json.loads((Path(datasets.__file__).parent / "utils/resources/size_categories.json").read_text())
    assert SIZE_CATEGORIES == set(shipped)
    written = (reference / "README.md").read_text(encoding="utf-8")
    assert _library_errors(written) == [] and card_errors(written, "dataset") == []
    assert _library_errors(GOOD_CARD) == [] and card_errors(GOOD_CARD, "dataset") == []
    bad = {  # one field broken at a time, in the ways the library refuses
        "configs": "configs:\n- config_name: default\n  data_files: 3\n",
        "configs ": "configs:\n- config_name: default\n  data_files:\n  - split: train\n",
        "dataset_info": "dataset_info:\n  features:\n  - name: image\n    dtype: no-such-type\n",
        "dataset_info ": "dataset_info:\n  features: 3\n",
        "size_categories": "size_categories: [huge]\n",
    }
    for field, yaml_text in bad.items():
        card = f"---\n{yaml_text}---\n# A card\n"
        assert _library_errors(card) == [field.strip()], (field, _library_errors(card))
        assert any(f'"{field.strip()}' in error for error in card_errors(card, "dataset")), (field, card_errors(card))
    for dtype in ("float32", "int64", "uint8", "bool", "string", "large_string", "image", "audio", "timestamp[ms]",
                  "float128", "int3", "str", "no-such-type"):  # fmt: skip
        card = f"---\ndataset_info:\n  features:\n  - name: x\n    dtype: {dtype}\n---\n# A card\n"
        assert bool(_library_errors(card)) == bool(card_errors(card, "dataset")), (dtype, card_errors(card))
