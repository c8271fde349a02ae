"""Identity record on disk, prompt files, and the changed-parameter count."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from personalize.param_count import count_changed
from personalize.prompts import PromptFileError, load_prompts
from personalize.record import META_FILE, TENSORS_FILE, IdentityRecord, PhotoInfo, RecordError


def _record(n=3, tokens=None):
    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(n, 512, generator=g), dim=-1)
    return IdentityRecord(embeddings=e, embeddings_flip=F.normalize(e + 0.1, dim=-1),
                          photos=[PhotoInfo(file=f"p{i}.jpg", box=[0, 0, 10, 10], det_score=0.9, n_faces=1)
                                  for i in range(n)],
                          skipped=[{"file": "bad.jpg", "reason": "no face detected"}],
                          class_word="girl", class_word_source="folder name",
                          encoder={"path": "enc", "sha256": "ab" * 32}, tokens=tokens)


def test_record_round_trip(tmp_path):
    rec = _record(tokens=torch.randn(4, 16))
    rec.save(tmp_path / "out")
    got = IdentityRecord.load(tmp_path / "out")
    assert torch.equal(got.embeddings, rec.embeddings) and torch.equal(got.tokens, rec.tokens)
    assert got.photos == rec.photos and got.skipped == rec.skipped and got.class_word == "girl"
    meta = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert meta["photos"][0]["file"] == "p0.jpg" and meta["encoder"]["sha256"] == "ab" * 32
    torch.testing.assert_close(got.pooled.norm(), torch.tensor(1.0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [META_FILE, TENSORS_FILE]
    assert got.fingerprint() == rec.fingerprint()
    rec.tokens = rec.tokens + 1
    assert rec.fingerprint() != got.fingerprint()


def test_failed_save_keeps_previous_record(tmp_path, monkeypatch):
    _record(n=2).save(tmp_path / "out")
    import personalize.record as record_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(record_mod, "save_file", boom)
    with pytest.raises(OSError):
        _record(n=5).save(tmp_path / "out")
    got = IdentityRecord.load(tmp_path / "out")
    assert got.embeddings.shape == (2, 512)
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_record_errors(tmp_path):
    with pytest.raises(RecordError, match="train.py"):
        IdentityRecord.load(tmp_path)
    _record().save(tmp_path / "out")
    (tmp_path / "out" / META_FILE).write_text("{not json")  # the human-readable copy is not read
    assert IdentityRecord.load(tmp_path / "out").class_word == "girl"
    t = tmp_path / "out" / TENSORS_FILE
    t.write_bytes(t.read_bytes()[: len(t.read_bytes()) // 2])
    with pytest.raises(RecordError, match="damaged"):
        IdentityRecord.load(tmp_path / "out")
    t.write_text("not a record")
    with pytest.raises(RecordError, match="damaged"):
        IdentityRecord.load(tmp_path / "out")


@pytest.mark.parametrize("content, message", [
    ('["a boy", 3]', "item 1 is a int"),
    ('{"prompts": ["a boy"]}', "holds a JSON dict"),
    ('["a boy",', "not valid JSON.*line 1"),
    ("[]", "empty list"),
    ('["a boy", "  "]', "item 1 is an empty string"),
])
def test_malformed_prompt_files(tmp_path, content, message):
    p = tmp_path / "p.json"
    p.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        load_prompts(p)


def test_prompt_file_ok_and_missing(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('["a boy", "a handsome boy"]')
    assert load_prompts(p) == ["a boy", "a handsome boy"]
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts(tmp_path / "nope.json")


def test_count_changed_parameters():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    original = {k: v.clone() for k, v in m.state_dict().items()}
    assert count_changed(m, original) == 0
    # a bf16 copy of unchanged weights is a cast, not a change
    assert count_changed(m.to(torch.bfloat16), original) == 0
    m.float()
    m.load_state_dict(original)
    with torch.no_grad():
        m[0].weight[0, 0] += 1.0
    assert count_changed(m, original) == 12  # the whole 3x4 tensor counts
    shaped = dict(original)
    shaped["1.weight"] = torch.zeros(5, 3)
    assert count_changed(m, shaped) == 12 + 6 + 15  # changed tensor + both sizes of the reshaped one
    missing = {k: v for k, v in original.items() if k != "1.bias"}
    assert count_changed(m, missing) == 12 + 2
