"""The per-identity fine-tuning baseline: LoRA wrapper, rare-token prompts, the grid's choice, tuning."""

import numpy as np
import pytest
import torch
from PIL import Image

from eval.finetune_baseline import FinetuneConfig, Finetuner, pick_best, rare_token_prompt, save
from eval.lora import LoRALinear, add_lora, lora_parameters, merge_lora
from models.uvit import UViT, UViTConfig


def _inputs(c: UViTConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c.in_chans, c.img_size, c.img_size, generator=g),
            torch.randn(b, 1, c.clip_img_dim, generator=g),
            torch.randn(b, c.num_text_tokens, c.text_dim, generator=g), torch.tensor([500.0, 20.0]),
            torch.zeros(2), torch.ones(2, dtype=torch.long))


def test_lora_starts_as_the_base_model_and_merges_into_it():
    torch.manual_seed(0)
    c = UViTConfig.tiny()
    base = UViT(c).eval()
    x = _inputs(c)
    with torch.no_grad():
        want = base(*x)
    model = UViT(c).eval()
    model.load_state_dict(base.state_dict())
    wrappers = add_lora(model, rank=4, alpha=8.0)
    n_blocks = 2 * (c.depth // 2) + 1  # in-, mid- and out-blocks
    assert len(wrappers) == n_blocks * 4 + c.depth // 2  # qkv, proj, fc1, fc2 per block + skip linears
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    with torch.no_grad():
        for a, b in zip(model(*x), want):
            torch.testing.assert_close(a, b)  # B = 0: the wrapped model is the base model
        for w in wrappers:
            w.lora_b.normal_(0, 0.05)
        adapted = model(*x)
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert set(merged.state_dict()) == set(base.state_dict())
        for a, b in zip(merged(*x), adapted):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (adapted[0] - want[0]).abs().max() > 1e-3


def test_rare_token_goes_before_the_class_word():
    assert rare_token_prompt("a photo of a boy wearing a red cap", "boy") == "a photo of a sks boy wearing a red cap"
    assert rare_token_prompt("A Girl, smiling, a girl", "girl") == "A sks Girl, smiling, a girl"
    assert rare_token_prompt("a woman in the snow", "man") == "sks man, a woman in the snow"  # not inside "woman"


def test_pick_best_keeps_editability_then_maximises_identity():
    rows = [{"mode": "full", "lr": 1e-4, "steps": 1000, "identity_similarity": 0.6, "edit_success": 0.3},
            {"mode": "lora", "lr": 1e-3, "steps": 300, "identity_similarity": 0.4, "edit_success": 0.8},
            {"mode": "lora", "lr": 2e-4, "steps": 100, "identity_similarity": 0.2, "edit_success": 0.9}]
    best = pick_best(rows, text_only_edit=0.85)
    assert (best["mode"], best["steps"]) == ("lora", 300)  # 0.8 >= 0.9 x 0.85; the 0.6 row edits too badly
    fallback = pick_best(rows, text_only_edit=1.5)  # nothing qualifies: the most editable
    assert fallback["steps"] == 100 and "no setting" in fallback["why"]


@pytest.fixture(scope="module")
def tuner(tmp_path_factory):
    from models.image_clip import ImageCLIP
    from models.pipeline import UniDiffuserT2I
    from tests.tiny_world import make_tiny_world

    root = tmp_path_factory.mktemp("ft")
    world = make_tiny_world(root / "world")
    photos = root / "boy1"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    pipe = UniDiffuserT2I.from_pretrained(world, device="cpu")
    return Finetuner(pipe, ImageCLIP.from_pretrained(world, device="cpu")), photos, root


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_finetuning_changes_a_copy_and_saves_and_loads(tuner, mode):
    tuner, photos, root = tuner
    before = {k: v.clone() for k, v in tuner.pipe.uvit.state_dict().items()}
    cfg = FinetuneConfig(mode=mode, steps=3, lr=1e-2, batch_size=2)
    snaps = list(tuner.train(photos, cfg, snapshots=(1, 5)))
    assert [s.step for s in snaps] == [1, 3] and len(snaps[-1].losses) == 3
    assert all(torch.equal(v, tuner.pipe.uvit.state_dict()[k]) for k, v in before.items())  # the pipeline's own
    tuned = snaps[-1].uvit.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, tuned[k])}
    assert changed
    if mode == "lora":  # only the blocks' adapted linears move
        assert all(".attn." in k or ".mlp." in k or "skip_linear" in k for k in changed)
        assert all(k.endswith("weight") for k in changed)
    folder = save(snaps[-1], cfg, root / f"saved_{mode}", {"class_word": "boy"})
    loaded, info = tuner.load(folder)
    assert info["config"]["steps"] == 3 and info["class_word"] == "boy"
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, tuned[k], atol=1e-6, rtol=1e-5)
