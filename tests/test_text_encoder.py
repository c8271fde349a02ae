"""CLIP text path: offline tokenizer files, the tiny text encoder, and clear errors for bad folders."""

import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from tiny_stack import make_tiny_weights_dir, tiny_configs

from models.clip_tokenizer import ClipTokenizer
from models.paths import WeightsError
from models.text_encoder import TextEncoder, check_clip_text_dir, load_clip_text, write_clip_tokenizer

PROMPTS = [
    "a photo of a sks boy",
    "An Elephant under the SEA!!",
    "it's 3 o'clock, isn't it?  Café   naïve",
    "",
    " ".join(["word"] * 100),  # truncated at 77
    "a sitting girl, 4k, trending on artstation",
]
# corners where a hand-written tokenizer could part from transformers'
REPO = Path(__file__).resolve().parent.parent
HARD_PROMPTS = PROMPTS + [
    "emoji 😀👍🏽 and 中文字符 and Ελληνικά", "tabs\tand\nnewlines\r\n here", "e\u0301 composed vs é",
    "<|endoftext|> inside <|startoftext|>text", "don't we'll they're I'm you've he'd", "12345 3.14159 1,000,000",
    "__under_score__ and-dash — em dash … ellipsis", "İstanbul ß ﬁ ligature", "a" * 300, "$$$ ### @@@ !!!???",
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return make_tiny_weights_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def clip_dir(weights):
    return weights / "models" / "clip-vit-large-patch14"


def test_tokenizer_matches_open_clip(tmp_path):
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok.pad_token_id == 49407 and tok.model_max_length == 77
    ours = tok(PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")
    ours = ours["input_ids"]
    ref = open_clip.get_tokenizer("ViT-B-32")(PROMPTS)  # pads with 0, we pad with <|endoftext|> (as HF)
    assert ours.shape == ref.shape == (len(PROMPTS), 77)
    for a, b in zip(ours, ref, strict=True):
        n = int((b != 0).sum())
        assert torch.equal(a[:n], b[:n])
        assert (a[n:] == 49407).all()
    assert ours[4, -1] == 49407 and (ours[4, 1:76] == ref[4, 1:76]).all()  # truncation keeps the EOS


def test_native_tokenizer_equals_transformers(tmp_path):
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer(tmp_path / "tok")
    hf = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    want = hf(HARD_PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")["input_ids"]
    ours = ClipTokenizer.from_folder(folder)
    assert len(ours) == 49408 and (ours.bos_id, ours.eos_id, ours.pad_id) == (49406, 49407, 49407)
    assert torch.equal(ours(HARD_PROMPTS), want)
    assert torch.equal(ours("a cat"), ours(["a cat"]))
    # tokenizer.json alone (its BPE model) gives the same ids
    hf.backend_tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "tok" / "vocab.json").unlink()
    (tmp_path / "tok" / "merges.txt").unlink()
    assert torch.equal(ClipTokenizer.from_folder(tmp_path / "tok")(HARD_PROMPTS), want)


def test_tiny_text_encoder(weights, clip_dir):
    from transformers import CLIPTextModel as HFCLIPTextModel

    configs = tiny_configs()
    enc = TextEncoder.from_pretrained(clip_dir, weights / "models" / "caption_decoder.pth",
                                      caption_decoder_config=configs["caption_decoder"])
    out = enc.encode(["a photo of a boy", "a girl"])
    text_dim = configs["caption_decoder"]["hidden_dim"]
    assert out.shape == (2, 77, text_dim) and out.dtype == torch.float32
    assert enc.text_dim == text_dim
    # = encode_prefix(last_hidden_state of the unmasked, EOS-padded ids), as transformers computes it
    ids = enc.tokenize(["a photo of a boy", "a girl"])
    assert ids.shape == (2, 77) and ids[1, 0] == 49406 and (ids[1, 3:] == 49407).all()
    hf = HFCLIPTextModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    with torch.no_grad():
        want = hf(input_ids=ids).last_hidden_state
    torch.testing.assert_close(enc.text_model(ids), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, enc.encode_prefix(want), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.encode("a girl"), out[1:])  # a single string works too
    assert not any(p.requires_grad for p in enc.parameters())


def test_sampling_path_does_not_import_transformers(weights):
    """transformers costs 8 s of import on the GPU machine: loading the pipeline must not need it."""
    code = ("import sys; from models.pipeline import UniDiffuserT2I; "
            f"p = UniDiffuserT2I.from_pretrained({str(weights)!r}, device='cpu'); p.encode_text('a cat'); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_sharded_weights_load(clip_dir, tmp_path):
    from transformers import CLIPTextModel as HFCLIPTextModel

    hf = HFCLIPTextModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    hf.save_pretrained(str(tmp_path), max_shard_size="500KB")
    write_clip_tokenizer(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    tokenizer, model = load_clip_text(tmp_path)
    ids = tokenizer(["a dog on a skateboard"])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_full_clip_model_folder(tmp_path):
    """The published folder holds the whole CLIPModel: only its text tower is loaded."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    full.save_pretrained(str(tmp_path))
    write_clip_tokenizer(tmp_path)
    tokenizer, model = load_clip_text(tmp_path)
    ids = tokenizer(["a cat"])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), full.text_model(input_ids=ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remove,expected", [
    (["merges.txt"], "tokenizer files"),
    (["vocab.json", "merges.txt"], "tokenizer files"),
    (["config.json"], "config.json"),
    (["model.safetensors"], "weights"),
])
def test_missing_files_are_named(clip_dir, tmp_path, remove, expected):
    bad = tmp_path / "clip"
    shutil.copytree(clip_dir, bad)
    for name in remove:
        (bad / name).unlink()
    with pytest.raises(WeightsError) as err:
        load_clip_text(bad)
    msg = str(err.value)
    assert str(bad) in msg and expected in msg and "openai/clip-vit-large-patch14" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        check_clip_text_dir(tmp_path / "nope")


def test_tokenizer_json_alone_is_enough(clip_dir, tmp_path):
    from transformers import CLIPTokenizer

    bad = tmp_path / "clip"
    shutil.copytree(clip_dir, bad)
    CLIPTokenizer.from_pretrained(str(bad)).backend_tokenizer.save(str(bad / "tokenizer.json"))
    (bad / "vocab.json").unlink()
    (bad / "merges.txt").unlink()
    check_clip_text_dir(bad)


def test_incomplete_weights_are_an_error(clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "clip"
    shutil.copytree(clip_dir, bad)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["final_layer_norm.weight"]  # (a text tower saved alone: no text_model. prefix)
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="final_layer_norm.weight"):
        load_clip_text(bad)
