"""Two gloo processes on CPU (torch.multiprocessing spawn, as torchrun would start them): sharded teacher
generation equals the single-process files, and data-parallel training agrees across ranks and with one process."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from indis.io import load_tensors


def _cfg():
    from indis.training.train import TrainConfig

    return TrainConfig(method="indis", nfe=3, steps=4, batch_size=8, val_every=2, ckpt_every=2, lr=5e-3, hidden=16, conv_width=8, val_fraction=0.25)


def _worker(rank, world, root):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=world)
    try:
        from indis.backbones.demo import ImageGMM
        from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher
        from indis.training.train import train

        bb = ImageGMM(channels=3, res=8, components=4)
        generate_teacher(bb, f"{root}/dist_teacher", TeacherConfig(count=40, shard_size=8, steps=6), progress=False)
        ds = load_teacher(f"{root}/dist_teacher", bb)
        # every rank reports its final parameters (DDP keeps them in sync)
        done = lambda m: torch.save(m.state_dict(), f"{root}/params_rank{rank}.pt")
        train(bb, ds, _cfg(), f"{root}/dist_run", progress=False, on_done=done)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes(tmp_path):
    from indis.backbones.demo import ImageGMM
    from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher
    from indis.training.train import build_model, train

    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    bb = ImageGMM(channels=3, res=8, components=4)
    generate_teacher(bb, tmp_path / "single_teacher", TeacherConfig(count=40, shard_size=8, steps=6), progress=False)
    for i in range(5):
        name = f"shard_{i:05d}.safetensors"
        assert (tmp_path / "dist_teacher" / name).read_bytes() == (tmp_path / "single_teacher" / name).read_bytes()
    ds = load_teacher(tmp_path / "dist_teacher", bb)
    train(bb, ds, _cfg(), tmp_path / "single_run", progress=False)
    a = load_tensors(tmp_path / "dist_run" / "checkpoint.safetensors")[0]
    b = load_tensors(tmp_path / "single_run" / "checkpoint.safetensors")[0]
    r0, r1 = (torch.load(tmp_path / f"params_rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the ranks agree
    assert all(torch.equal(r0[k], a["model." + k]) for k in r0)  # the checkpoint holds them
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("model."):
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
