import json
import os

import pytest
import torch

from indis.backbones import CondSpec
from indis.backbones.demo import ImageGMM
from indis.sampling.seeds import conditions_for_seeds, draw, prior_noise
from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher


def test_prior_noise_is_per_seed_and_batch_independent():
    a = prior_noise([5, 6, 7, 8], (3, 4, 4), 80.0)
    b = prior_noise([7], (3, 4, 4), 80.0)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    g = torch.Generator().manual_seed(7)
    assert torch.equal(b[0], (torch.randn(3, 4, 4, generator=g).double() * 80.0).float())
    x64 = prior_noise([7], (3, 4, 4), 80.0, dtype=torch.float64)
    assert torch.equal(x64.float(), b)


def test_conditions_are_per_seed():
    cs = CondSpec("class", 10)
    c = conditions_for_seeds(list(range(50)), cs, (2, 2))
    assert c.dtype == torch.int64 and c.min() >= 0 and c.max() < 10 and len(set(c.tolist())) > 3
    assert conditions_for_seeds([17], cs, (2, 2))[0] == c[17]
    x, c2 = draw([3, 17], (2, 2), 1.0, cs)
    assert c2[1] == c[17] and torch.equal(x[0], prior_noise([3], (2, 2), 1.0)[0])
    table = torch.randn(4, 6)
    t = conditions_for_seeds([1, 2], CondSpec("text", 6), (2, 2), table)
    assert t.shape == (2, 6)
    with pytest.raises(ValueError, match="prompt embeddings"):
        conditions_for_seeds([1], CondSpec("text", 6), (2, 2))


@pytest.fixture(scope="module")
def small():
    return ImageGMM(channels=3, res=4, components=4)


def test_generate_load_verify_and_resume(tmp_path, small):
    cfg = TeacherConfig(count=10, shard_size=4, steps=8, batch_size=3)
    m = generate_teacher(small, tmp_path / "t", cfg, progress=False)
    assert m["complete"] and m["count"] == 10 and len(m["shards"]) == 3
    assert m["teacher"]["solver"] == "ipndm" and m["backbone_id"] == small.backbone_id
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    ds = load_teacher(tmp_path / "t", small)
    assert ds.seeds.tolist() == list(range(10)) and ds.x0.shape == (10, 3, 4, 4)
    # x_T regenerated from the seeds, and the teacher endpoint reproduced from it
    from indis.schedules import get_schedule
    from indis.solvers import sample

    x_T, _, x0 = ds.batch(torch.tensor([2, 9]), dtype=torch.float64)
    ref = sample(small, x_T, get_schedule("polynomial", "edm", 8), solver="ipndm")
    assert torch.allclose(ref.float(), x0.float(), atol=1e-5)

    # interrupted: shard 1 lost, manifest not complete -> only shard 1 is redone, identical
    root = tmp_path / "t"
    stamps = {f: os.stat(root / f).st_mtime_ns for f in ("shard_00000.safetensors", "shard_00002.safetensors")}
    before = (root / "shard_00001.safetensors").read_bytes()
    os.remove(root / "shard_00001.safetensors")
    man = json.loads((root / "manifest.json").read_text())
    man["complete"] = False
    (root / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="incomplete"):
        load_teacher(root)
    generate_teacher(small, root, cfg, progress=False)
    assert (root / "shard_00001.safetensors").read_bytes() == before
    assert all(os.stat(root / f).st_mtime_ns == s for f, s in stamps.items())
    load_teacher(root, small)

    # other settings into the same folder are refused
    with pytest.raises(ValueError, match="different settings.*steps"):
        generate_teacher(small, root, TeacherConfig(count=10, shard_size=4, steps=9), progress=False)
    # a changed shard is caught by its checksum
    f = root / "shard_00002.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_teacher(root)


def test_backbone_mismatch_refused(tmp_path, small):
    generate_teacher(small, tmp_path / "t", TeacherConfig(count=3, steps=4), progress=False)
    other = ImageGMM(channels=3, res=4, components=4, seed=1)
    with pytest.raises(ValueError, match="backbone id"):
        load_teacher(tmp_path / "t", other)
    with pytest.raises(FileNotFoundError, match="indis teacher"):
        load_teacher(tmp_path / "nothing")


def test_conditional_teacher_with_guidance(tmp_path):
    bb = ImageGMM(channels=1, res=4, components=4, conditional=True)
    m = generate_teacher(bb, tmp_path / "t", TeacherConfig(count=6, steps=6), progress=False)
    ds = load_teacher(tmp_path / "t", bb)
    assert ds.cond.tolist() == conditions_for_seeds(range(6), bb.cond_spec, bb.data_shape).tolist()
    # the GMM has no null condition: guidance gives NaN, which the teacher refuses to store
    with pytest.raises(ValueError, match="NaN"):
        generate_teacher(bb, tmp_path / "g", TeacherConfig(count=2, steps=4, cfg_scale=1.5), progress=False)


def test_guidance_combines_conditional_and_null_calls():
    from indis.backbones import Backbone
    from indis.sampling.guidance import GuidedBackbone

    class Toy(Backbone):
        def __init__(self):
            super().__init__("edm", "x0", (2,), CondSpec("class", 3))

        def predict(self, x, t, cond):
            return x * 0 + cond[:, :2] * 4.0 + 1.0  # null condition -> 1

    g = GuidedBackbone(Toy(), 2.5)
    out = g(torch.zeros(2, 2), torch.ones(2), torch.tensor([0, 2]))
    # u + s (c - u) with u = 1, c = 1 + 4 onehot[:2]
    assert torch.allclose(out, torch.tensor([[11.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="conditional backbone"):
        GuidedBackbone(ImageGMM(channels=1, res=2, components=2), 2.0)


def _text_toy():
    """A tiny text-conditional backbone: eps = tanh(x + mean of the condition)."""
    from indis.backbones.base import Backbone

    class TextToy(Backbone):
        def __init__(self):
            super().__init__("flow", "velocity", (2, 2), CondSpec("text", 6))
            self.w = torch.nn.Parameter(torch.tensor([0.5]))

        def predict(self, x, t, cond):
            return torch.tanh(self.w * x + cond.mean(1).view(-1, 1, 1))

    return TextToy()


def test_text_teacher_stores_prompt_table_and_each_seeds_prompt_index(tmp_path):
    """A text model's teacher set keeps the prompt table (sha256 in the manifest) and, per row, the index of the
    prompt its seed drew (the same draw as indis.sampling.seeds); loading checks that the indices pick the stored
    conditions from the table."""
    from indis.io import load_tensors, save_tensors
    from indis.sampling.seeds import unit_noise_and_index

    bb = _text_toy()
    table = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    x, c, idx = draw([0, 1, 2, 3], (2, 2), 1.0, CondSpec("text", 6), table, with_index=True)
    assert torch.equal(c, table[idx]) and torch.equal(idx, unit_noise_and_index([0, 1, 2, 3], (2, 2), 3)[1])
    assert torch.equal(x, draw([0, 1, 2, 3], (2, 2), 1.0, CondSpec("text", 6), table)[0])
    m = generate_teacher(bb, tmp_path / "t", TeacherConfig(count=7, shard_size=4, steps=4, batch_size=3), table, progress=False)
    assert len(m["prompt_table_sha256"]) == 64
    ds = load_teacher(tmp_path / "t", bb)
    want = unit_noise_and_index(list(range(7)), (2, 2), 3)[1]
    assert torch.equal(ds.prompt_index, want) and len(set(want.tolist())) > 1
    assert torch.equal(ds.table, table) and torch.equal(ds.cond, table[want])
    # a shard whose indices do not pick its conditions is refused
    f = tmp_path / "t" / "shard_00001.safetensors"
    t, meta = load_tensors(f)
    t["prompt_index"] = (t["prompt_index"] + 1) % 3
    save_tensors(f, t, meta)
    with pytest.raises(ValueError, match="prompt_index"):
        load_teacher(tmp_path / "t", bb, verify=False)
