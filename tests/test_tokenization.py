import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer

from synfer_diffusers.tokenization import (
    BOS_TOKEN,
    EOS_TOKEN,
    bytes_to_unicode,
    learn_bpe_merges,
    tiny_clip_tokenizer,
    tiny_corpus,
    train_clip_tokenizer,
)

PROMPT = "a photo of a happy face"
ODD_TEXTS = ["", "   ", "😀🙂 naïve café 你好 Ωmega", "\x00\x01\t\n", "<|endoftext|> inside", "AU12 = 4.0; ¿qué?"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_clip_tokenizer()


def test_clip_vocabulary_layout(tokenizer):
    vocab = tokenizer.get_vocab()
    symbols = list(bytes_to_unicode().values())
    assert len(set(symbols)) == 256
    for i, symbol in enumerate(symbols):  # bytes, then their end-of-word forms, as in CLIP's vocab.json
        assert vocab[symbol] == i and vocab[symbol + "</w>"] == 256 + i
    assert vocab["a</w>"] == 320  # same id as in OpenAI's CLIP vocabulary
    n = len(tokenizer)
    assert n <= 1024 and sorted(vocab.values()) == list(range(n))
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == (BOS_TOKEN, n - 2)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == (EOS_TOKEN, n - 1)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == 77


def test_prompt_words_are_single_tokens(tokenizer):
    assert tokenizer.tokenize(PROMPT) == ["a</w>", "photo</w>", "of</w>", "a</w>", "happy</w>", "face</w>"]
    for caption in tiny_corpus():
        words = caption.lower().replace(",", " ").replace(".", " ").split()
        tokens = tokenizer.tokenize(caption)
        assert all(w + "</w>" in tokens for w in words if w.isalpha()), caption
    # Case and whitespace are normalised as in CLIP.
    assert tokenizer.tokenize("A  PHOTO\nof a Happy face") == tokenizer.tokenize(PROMPT)


def test_padding_to_max_length(tokenizer):
    enc = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert len(ids) == len(mask) == 77
    assert ids[0] == tokenizer.bos_token_id and ids[7] == tokenizer.eos_token_id
    assert ids[8:] == [tokenizer.pad_token_id] * 69 and sum(mask) == 8
    long_prompt = " ".join([PROMPT] * 40)
    long = tokenizer(long_prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert long.input_ids.shape == (1, 77) and long.input_ids[0, -1] == tokenizer.eos_token_id


def test_any_text_tokenizes_without_unknowns(tokenizer):
    for text in ODD_TEXTS:
        ids = tokenizer(text).input_ids
        inner = ids[1:-1]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        if "<|endoftext|>" not in text:
            assert all(i < tokenizer.bos_token_id for i in inner), text  # nothing mapped to the unk/eos token
    words = "naïve café 你好 😀 ωmega photo"
    assert tokenizer.decode(tokenizer(words).input_ids, skip_special_tokens=True) == words


def test_save_and_load_back(tokenizer, tiny_tokenizer_dir, tmp_path):
    files = set(os.listdir(tiny_tokenizer_dir))
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= files
    assert open(tiny_tokenizer_dir / "merges.txt", encoding="utf-8").readline() == "#version: 0.2\n"
    assert json.load(open(tiny_tokenizer_dir / "vocab.json", encoding="utf-8")) == tokenizer.get_vocab()

    clip = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir)
    auto = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert isinstance(auto, CLIPTokenizer) and auto.model_max_length == 77
    # CLIP's original two files alone are enough.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_tokenizer_dir / name, tmp_path / name)
    bare = CLIPTokenizer.from_pretrained(tmp_path)
    for text in [PROMPT, *ODD_TEXTS]:
        expected = tokenizer(text).input_ids
        assert clip(text).input_ids == auto(text).input_ids == bare(text).input_ids == expected


def test_text_encoder_round_trip_offline(tiny_tokenizer_dir, tmp_path):
    from synfer_diffusers.tiny import make_tiny_text_encoder

    tokenizer = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir)
    encoder = make_tiny_text_encoder(seed=0, tokenizer=tokenizer)
    assert encoder.config.vocab_size == len(tokenizer)
    assert encoder.config.eos_token_id == tokenizer.eos_token_id
    encoder.save_pretrained(tmp_path / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "tokenizer")

    tokenizer2 = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    encoder2 = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    ids = tokenizer([PROMPT, ODD_TEXTS[2]], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = tokenizer2([PROMPT, ODD_TEXTS[2]], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, ids2)
    with torch.no_grad():
        out, out2 = encoder(ids), encoder2(ids2)
    assert out.last_hidden_state.shape == (2, 77, 32)
    assert torch.equal(out.last_hidden_state, out2.last_hidden_state)
    assert torch.equal(out.pooler_output, out2.pooler_output)


def test_tiny_components_share_the_tokenizer(tiny_components):
    from synfer_diffusers.tiny import make_tiny_components

    tokenizer, text_encoder, unet = (tiny_components[k] for k in ("tokenizer", "text_encoder", "unet"))
    assert text_encoder.config.vocab_size == len(tokenizer)
    assert tokenizer.get_vocab() == tiny_clip_tokenizer().get_vocab()
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size
    again = make_tiny_components(seed=0)
    for name in ("vae", "text_encoder", "unet"):
        state, state_again = tiny_components[name].state_dict(), again[name].state_dict()
        assert all(torch.equal(state[k], state_again[k]) for k in state), name


def test_train_on_captions_respects_vocab_size():
    captions = [f"a photo of a {w} person with a {e} expression" for w in ("young", "old") for e in ("happy", "sad")]
    tok = train_clip_tokenizer(captions * 3, vocab_size=540)
    assert len(tok) <= 540
    assert "photo</w>" in tok.get_vocab() and "expression</w>" in tok.get_vocab()
    smallest = train_clip_tokenizer(captions, vocab_size=514)
    assert len(smallest) == 514 and smallest.tokenize("happy") == ["h", "a", "p", "p", "y</w>"]


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="vocab_size"):
        train_clip_tokenizer(["a face"], vocab_size=100)
    with pytest.raises(ValueError, match="model_max_length"):
        train_clip_tokenizer(["a face"], model_max_length=0)
    with pytest.raises(ValueError, match="min_frequency"):
        train_clip_tokenizer(["a face"], min_frequency=0)
    with pytest.raises(TypeError, match="corpus"):
        train_clip_tokenizer("a photo of a face")
    with pytest.raises(TypeError, match="corpus"):
        train_clip_tokenizer(["a face", 3])


def _random_word_counts(seed: int = 0) -> dict[str, int]:
    rnd = random.Random(seed)
    words = ["".join(rnd.choice("abcdef") for _ in range(rnd.randint(1, 6))) for _ in range(400)]
    return {w: rnd.randint(1, 3) for w in words}  # many tied pair counts


@pytest.mark.slow  # one subprocess that imports the HF stack
def test_merges_are_deterministic_across_processes(tokenizer):
    merges = learn_bpe_merges(_random_word_counts(), max_new_tokens=300, min_frequency=1)
    assert merges == learn_bpe_merges(_random_word_counts(), max_new_tokens=300, min_frequency=1)
    # Another process with another string-hash seed learns the same merges (ties are broken by pair order).
    code = (
        "import json; from test_tokenization import _random_word_counts as c; "
        "from synfer_diffusers.tokenization import learn_bpe_merges as l, tiny_clip_tokenizer as t; "
        "print(json.dumps([l(c(), max_new_tokens=300, min_frequency=1), t().get_vocab()]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.path.dirname(__file__)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    other_merges, other_vocab = json.loads(result.stdout.strip().splitlines()[-1])
    assert [tuple(m) for m in other_merges] == merges
    assert other_vocab == tokenizer.get_vocab()
