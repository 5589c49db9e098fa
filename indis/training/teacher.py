"""Teacher datasets: tuples (seed, condition, x0*) made by a many-step solver (paper Algorithm 1, line 2).

Layout of a dataset folder:
  manifest.json            format, backbone id and config, process, teacher settings, count, shards + sha256
  shard_00000.safetensors  seeds [n] int64, x0 [n, *data_shape] float32, cond [n] or [n, dim] (conditional only),
                           prompt_index [n] int64 (text models: the row of the prompt table each seed drew)
  prompt_table.safetensors text models: the table [M, dim] of packed prompt conditions (its sha256 in the manifest)
  shard_00000.json         sidecar written after its shard: {"sha256": ..., "count": ...}
The prior noise is *not* stored: x_T is regenerated bit-exactly from the seed (indis.sampling.seeds).

Generation is resumable: shards whose file and sidecar exist and agree are skipped, so an interrupted run
continues where it stopped. With torch.distributed initialised, shard i is made by rank i % world_size; rank 0
writes the final manifest after a barrier. A shard depends only on its seeds (its batches are cut the same way
on every rank), so sharded generation gives the same files as a single process.

Loading verifies that the manifest is complete, every shard's sha256, and (if given) the backbone id, and
refuses any mismatch with an error that says what differs.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..backbones.base import DTYPES, CondSpec, parse_dtype
from ..io import TEACHER, atomic_write_json, claim_folder, load_prompt_table, load_tensors, save_tensors, sha256_file
from ..options import setting
from ..sampling.guidance import GuidedBackbone
from ..sampling.seeds import draw
from ..schedules import SCHEDULE_NAMES, get_schedule
from ..solvers import SOLVERS, sample

Tensor = torch.Tensor
FORMAT = "indis-teacher/1"
@dataclass
class TeacherConfig:
    """Settings of a teacher dataset (all recorded in the manifest)."""

    count: int = setting(1000, "number of tuples")
    first_seed: int = setting(0, "seeds first_seed .. first_seed + count - 1")
    shard_size: int = setting(256, "tuples per shard file")
    solver: str = setting("ipndm", "teacher solver", choices=SOLVERS)
    steps: int = setting(30, "teacher NFE")
    schedule: str = setting("polynomial", "heuristic schedule of the teacher", choices=SCHEDULE_NAMES)
    order: Optional[int] = setting(None, "solver order (default: the solver's)")
    cfg_scale: float = setting(1.0, "classifier-free guidance scale (conditional backbones)")
    state_dtype: str = setting("float64", "solver state precision", choices=tuple(DTYPES))
    batch_size: int = setting(128, "generation batch (does not change the result's seeds or x_T)")

    def settings(self) -> Dict:
        d = asdict(self)
        d.pop("batch_size")
        return d


def teacher_schedule(backbone, cfg: TeacherConfig) -> Tensor:
    return get_schedule(cfg.schedule, backbone.process, cfg.steps)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _plan(backbone, cfg: TeacherConfig, table: Optional[Tensor]) -> Dict:
    cs = getattr(backbone, "cond_spec", CondSpec())
    n_shards = math.ceil(cfg.count / cfg.shard_size)
    return {
        "format": FORMAT,
        "backbone_id": backbone.backbone_id,
        "backbone_config": backbone.config() if hasattr(backbone, "config") else {},
        "process": backbone.process.config(),
        "prediction_type": backbone.prediction_type,
        "data_shape": list(backbone.data_shape),
        "cond_spec": cs.to_dict(),
        "prior_std": backbone.process.prior_std(),
        "teacher": cfg.settings(),
        "timesteps": teacher_schedule(backbone, cfg).tolist(),
        "count": cfg.count,
        "num_shards": n_shards,
        "prompt_table_sha256": None if table is None else _tensor_sha(table),
    }


def _tensor_sha(t: Tensor) -> str:
    import hashlib

    t = t.detach().cpu().contiguous()
    return hashlib.sha256(str(t.dtype).encode() + str(tuple(t.shape)).encode() + t.view(torch.uint8).numpy().tobytes()).hexdigest()


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def _shard_done(out: Path, i: int) -> Optional[Dict]:
    f, side = out / f"{_shard_name(i)}.safetensors", out / f"{_shard_name(i)}.json"
    if not (f.is_file() and side.is_file()):
        return None
    try:
        info = json.loads(side.read_text())
    except ValueError:
        return None
    return info if info.get("sha256") == sha256_file(f) else None


def _bad_shards(out: Path, manifest: Dict) -> List[int]:
    """Indices of the shards of a complete manifest whose file is missing or does not have the manifest's
    sha256 (corrupted, truncated, replaced or deleted)."""
    entries: Dict = {}
    for s in manifest.get("shards", []):
        if isinstance(s, dict):
            entries.setdefault(s.get("index"), []).append(s)
    bad = []
    for i in range(manifest["num_shards"]):
        mine = entries.get(i, [])
        f = out / f"{_shard_name(i)}.safetensors"
        if len(mine) != 1 or not f.is_file() or sha256_file(f) != mine[0].get("sha256"):
            bad.append(i)
    return bad


def generate_teacher(backbone, out_dir, cfg: TeacherConfig = TeacherConfig(), table: Optional[Tensor] = None, device=None,
                     progress: bool = True, model_dtype: Optional[str] = None, log=None) -> Dict:
    """Make (or resume) a teacher dataset in out_dir; returns the manifest. Works under torch.distributed.
    On a complete dataset every shard is checked against the manifest's sha256; missing or damaged shards are
    made again (bit-exactly: a shard depends only on its seeds) and the manifest is rewritten."""
    if cfg.count < 1 or cfg.shard_size < 1 or cfg.batch_size < 1:
        raise ValueError("count, shard_size and batch_size must be positive")
    out = claim_folder(out_dir, TEACHER, "teacher")
    rank, world = _dist()
    plan = _plan(backbone, cfg, table)
    mpath = out / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        diff = [k for k in plan if old.get(k) != json.loads(json.dumps(plan[k]))]
        if diff:
            raise ValueError(
                f"{out} already holds a teacher dataset with different settings ({', '.join(diff)}); "
                "use another folder or delete it"
            )
        if old.get("complete"):
            bad = _bad_shards(out, old)
            if not bad:
                return old
            _barrier()  # every rank has looked before rank 0 changes anything
            if rank == 0:
                if log is not None:
                    log(f"{out}: {len(bad)} of {old['num_shards']} shards are missing or do not match the manifest "
                        f"(shards {', '.join(map(str, bad[:10]))}{', ...' if len(bad) > 10 else ''}); making them again")
                for i in bad:  # without its sidecar a shard counts as not done
                    (out / f"{_shard_name(i)}.json").unlink(missing_ok=True)
                atomic_write_json(mpath, dict(old, complete=False))
    elif rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(mpath, dict(plan, complete=False, shards=[]))
    _barrier()
    if table is not None and rank == 0:
        save_tensors(out / "prompt_table.safetensors", {"table": table}, {"sha256": plan["prompt_table_sha256"]})

    model = GuidedBackbone(backbone, cfg.cfg_scale)
    cs = model.cond_spec
    ts = teacher_schedule(backbone, cfg)
    state_dtype = parse_dtype(cfg.state_dtype)
    mdt = None if model_dtype is None else parse_dtype(model_dtype)
    dev = torch.device(device) if device is not None else next((p.device for p in backbone.parameters()), torch.device("cpu"))
    mine = [i for i in range(plan["num_shards"]) if i % world == rank and _shard_done(out, i) is None]
    total = sum(min(cfg.shard_size, cfg.count - i * cfg.shard_size) for i in mine)
    bar = None
    if progress and rank == 0 and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"teacher ({cfg.solver} {cfg.steps} steps)", unit="sample")
    for i in mine:
        lo = cfg.first_seed + i * cfg.shard_size
        hi = min(cfg.first_seed + cfg.count, lo + cfg.shard_size)
        seeds = torch.arange(lo, hi, dtype=torch.int64)
        xs, cs_all, idx_all = [], [], []
        for b0 in range(0, len(seeds), cfg.batch_size):
            sb = seeds[b0 : b0 + cfg.batch_size]
            x_T, cond, idx = draw(sb, backbone.data_shape, plan["prior_std"], cs, table, device=dev, dtype=state_dtype,
                                  with_index=True)
            with torch.no_grad():
                x0 = sample(model, x_T, ts.to(dev), solver=cfg.solver, order=cfg.order, cond=cond, state_dtype=state_dtype, model_dtype=mdt)
            if not torch.isfinite(x0).all():
                raise ValueError(f"the teacher produced NaN/inf for seeds {int(sb[0])}..{int(sb[-1])} (backbone output or guidance invalid?)")
            xs.append(x0.float().cpu())
            if cond is not None:
                cs_all.append(cond.cpu())
            if table is not None:
                idx_all.append(idx)
            if bar is not None:
                bar.update(len(sb))
        tensors = {"seeds": seeds, "x0": torch.cat(xs)}
        if cs_all:
            tensors["cond"] = torch.cat(cs_all)
        if idx_all:
            tensors["prompt_index"] = torch.cat(idx_all)
        f = out / f"{_shard_name(i)}.safetensors"
        save_tensors(f, tensors, {"shard": i, "backbone_id": plan["backbone_id"], "seeds": [lo, hi]})
        atomic_write_json(out / f"{_shard_name(i)}.json", {"sha256": sha256_file(f), "count": len(seeds), "seeds": [lo, hi]})
    if bar is not None:
        bar.close()
    _barrier()
    manifest = dict(plan, complete=False, shards=[])
    if rank == 0:
        shards = []
        for i in range(plan["num_shards"]):
            info = _shard_done(out, i)
            if info is None:
                raise RuntimeError(f"shard {i} of {out} is missing after generation")
            shards.append({"index": i, "file": f"{_shard_name(i)}.safetensors", "sha256": info["sha256"], "count": info["count"], "seeds": info["seeds"]})
        manifest = dict(plan, complete=True, shards=shards)
        atomic_write_json(mpath, manifest)
    _barrier()
    return json.loads(mpath.read_text())


@dataclass
class TeacherDataset:
    """A loaded, verified teacher dataset. x_T is regenerated from `seeds` on demand."""

    root: Path
    manifest: Dict
    seeds: Tensor
    x0: Tensor
    cond: Optional[Tensor] = None
    table: Optional[Tensor] = None
    prompt_index: Optional[Tensor] = None  # text models: each seed's row of `table` [n] int64

    @property
    def data_shape(self):
        return tuple(self.manifest["data_shape"])

    @property
    def cond_spec(self) -> CondSpec:
        return CondSpec(**self.manifest["cond_spec"])

    @property
    def prior_std(self) -> float:
        return float(self.manifest["prior_std"])

    @property
    def backbone_id(self) -> str:
        return self.manifest["backbone_id"]

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def fingerprint(self) -> str:
        """Identity of the dataset, not of its path: backbone, teacher settings, seeds and every shard's sha256."""
        import hashlib

        m = self.manifest
        body = {k: m.get(k) for k in ("backbone_id", "teacher", "count", "process", "data_shape", "cond_spec",
                                      "prompt_table_sha256")}
        body["shards"] = [s["sha256"] for s in m["shards"]]
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def x_T(self, idx, device=None, dtype=torch.float32) -> Tensor:
        """Regenerate the prior noise of the samples at positions idx."""
        x, _ = draw(self.seeds[idx], self.data_shape, self.prior_std, CondSpec(), device=device, dtype=dtype)
        return x

    def batch(self, idx, device=None, dtype=torch.float32):
        """(x_T, cond, x0*) for positions idx."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        c = None if self.cond is None else self.cond[idx].to(device)
        return self.x_T(idx, device, dtype), c, self.x0[idx].to(device=device, dtype=dtype)


def _check_manifest(m: Dict, mpath: Path) -> None:
    """The fields load_teacher reads, with their types; shard files must be the dataset's own shard names."""
    types = {"backbone_id": str, "count": int, "num_shards": int, "data_shape": list, "cond_spec": dict,
             "prior_std": (int, float), "shards": list, "teacher": dict}
    for key, typ in types.items():
        if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
            raise ValueError(f"{mpath}: field {key!r} is missing or has the wrong type ({m.get(key)!r}); the manifest "
                             "is damaged or was edited: make the dataset again with `indis teacher`")
    try:
        CondSpec(**m["cond_spec"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{mpath}: cond_spec {m['cond_spec']!r} is invalid: {e}") from None
    for s in m["shards"]:
        ok = isinstance(s, dict) and isinstance(s.get("index"), int) and isinstance(s.get("sha256"), str)
        if not ok or s.get("file") != f"{_shard_name(s['index'])}.safetensors":
            raise ValueError(f"{mpath}: shard entry {s!r} is not one of this dataset's shards (expected "
                             "{index, file: shard_NNNNN.safetensors, sha256, ...}); the manifest is damaged or was edited")


def load_teacher(root, backbone=None, verify: bool = True) -> TeacherDataset:
    """Load a teacher dataset. backbone: a backbone or a backbone id string that must match the manifest."""
    root = Path(root)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"no teacher dataset at {root} (missing manifest.json); make one with `indis teacher`")
    try:
        m = json.loads(mpath.read_text())
    except ValueError as e:
        raise ValueError(f"{mpath} is not valid JSON (corrupt or truncated?): {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ValueError(f"{mpath}: unknown format {m.get('format') if isinstance(m, dict) else None!r}, expected {FORMAT!r}"
                         " (is this a teacher dataset?)")
    _check_manifest(m, mpath)
    if not m.get("complete"):
        raise ValueError(f"{root}: the teacher dataset is incomplete (interrupted?); run `indis teacher` again with the same settings to resume")
    if backbone is not None:
        want = backbone if isinstance(backbone, str) else backbone.backbone_id
        if want != m["backbone_id"]:
            raise ValueError(
                f"{root} was generated with backbone id {m['backbone_id']}, but the given backbone has id {want}; "
                "regenerate the teacher for this backbone or load the matching one"
            )
    seeds, xs, cs, ids = [], [], [], []
    for s in m["shards"]:
        f = root / s["file"]
        if not f.is_file():
            raise FileNotFoundError(f"{root}: shard file {s['file']} listed in the manifest is missing")
        if verify and sha256_file(f) != s["sha256"]:
            raise ValueError(f"{f}: checksum mismatch (sha256 differs from the manifest); the file is corrupt or was changed")
        t, meta = load_tensors(f)
        if meta.get("backbone_id") != m["backbone_id"]:
            raise ValueError(f"{f}: shard was made for backbone id {meta.get('backbone_id')}, the manifest says {m['backbone_id']}")
        seeds.append(t["seeds"])
        xs.append(t["x0"])
        if "cond" in t:
            cs.append(t["cond"])
        if "prompt_index" in t:
            ids.append(t["prompt_index"])
    table = None
    if m.get("prompt_table_sha256"):
        table = load_prompt_table(root / "prompt_table.safetensors", "the teacher set's prompt table")
        if verify and _tensor_sha(table) != m["prompt_table_sha256"]:
            raise ValueError(f"{root}/prompt_table.safetensors: checksum mismatch")
    ds = TeacherDataset(root, m, torch.cat(seeds), torch.cat(xs), torch.cat(cs) if cs else None, table,
                        torch.cat(ids) if ids else None)
    if len(ds) != m["count"]:
        raise ValueError(f"{root}: manifest says {m['count']} samples, shards hold {len(ds)}")
    if table is not None and ds.prompt_index is not None:
        if len(ds.prompt_index) != len(ds) or not torch.equal(table[ds.prompt_index].to(ds.cond.dtype), ds.cond):
            raise ValueError(f"{root}: the shards' prompt_index does not pick their conditions from prompt_table.safetensors")
    return ds
