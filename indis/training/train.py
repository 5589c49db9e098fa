"""Algorithm 1 of the paper: learn phi(x_T, c) -> {tau, dtau, gamma} by matching a few-step solve to the
teacher's endpoint, and the global baselines trained by the same loop.

Methods (TrainConfig.method):
  indis   the instance-aware predictor (indis.predictor.Predictor)
  god     one global {tau, dtau, gamma} (GlobalDiscretization)
  ld3     LD3's global schedule with decoupled shifts and the soft x_T ball (indis.baselines.ld3)
  amed    AMED-Plugin on iPNDM (indis.baselines.amed): a small network predicting each coarse step's intermediate
          point and scales, trained by this loop (NFE even: 2K calls; odd: 2K - 1 with AFS)
  gits, dmn, sdm  training-free peers (indis.baselines): searched over solvers and AFS, not trained
Ablations of the paper's Fig. 5 (for indis): no_instance (phi sees only the condition), no_shift (b_dtau = 0),
no_scale (b_gamma = 0), no_cond (phi does not see the condition).

Loop: Adam, cosine learning rate from lr to lr * lr_min_factor; a held-out validation split (a fixed random
part of the teacher set, chosen by the seed); the distance d of indis.metrics.distances; the weights with the
best validation distance are the result. Batches are a function of (seed, step) alone (an epoch-wise random
permutation), so a run is deterministic for a seed and resumes exactly: the checkpoint (safetensors, written
atomically every ckpt_every steps) holds the model, Adam's state, the best weights, the LD3 latents and the
history; --resume continues from it and reproduces the uninterrupted run.

Large backbones: grad_checkpoint recomputes each backbone call in the backward pass; backbone_dtype runs the
backbone under torch.autocast in float16/bfloat16 (the solver state and the predictor stay float32/64).
Conditional backbones: cfg_scale applies classifier-free guidance to every student call (the teacher records
its own scale in its manifest; the two should agree).

Distributed: under torch.distributed (torchrun; gloo on CPU, NCCL on GPU) the model is wrapped in
DistributedDataParallel and each rank takes a strided slice of every global batch, so the global batch, the
data order and hence the result do not depend on the number of processes (up to float summation order).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..backbones.base import DTYPES, CondSpec, parse_dtype
from ..baselines import sdm
from ..baselines.amed import AMEDPlugin, amed_steps
from ..baselines.common import Sampled, peer_schedule
from ..baselines.ld3 import LD3Discretization, ball_proposal, ball_radius
from ..baselines.search import AFS_SETTINGS, parse_afs, parse_solvers, score, select
from ..discretization import WARPS, DiscretizationParam
from ..io import RUN_FORMAT, RUN_MARKER, TRAINING_RUN, atomic_write_json, claim_folder, load_tensors, save_tensors
from ..metrics.distances import LOSSES, TRUNK_FILES, distance_name, get_distance, mse
from ..options import setting
from ..predictor import GlobalDiscretization, Predictor, save_predictor
from ..sampling.guidance import GuidedBackbone
from ..sampling.load import load_predictor
from ..sampling.solve import solve
from ..schedules import SCHEDULE_NAMES, get_schedule
from ..solvers import SOLVERS, sample
from .teacher import TeacherDataset

Tensor = torch.Tensor
PEER_METHODS = ("gits", "dmn", "sdm")  # training-free peers (indis.baselines): searched, not trained
METHODS = ("indis", "god", "ld3", "amed") + PEER_METHODS


@dataclass
class TrainConfig:
    method: str = setting("indis", "what to train: INDIS, the global GOD, LD3, AMED-Plugin, or search a training-free peer",
                          choices=METHODS)
    nfe: int = setting(5, "student NFE (network calls)")
    solver: str = setting("ipndm", "student solver", choices=SOLVERS)
    order: Optional[int] = setting(None, "solver order (default: the solver's)")
    warp: str = setting("logsnr", "warp space of tau and dtau", choices=WARPS)
    rho: float = setting(7.0, "exponent of the sigma_rho warp")
    b_dtau: float = setting(0.05, "bound of the shift dtau (warp units)")
    b_gamma: float = setting(0.05, "bound of the scale gamma around 1")
    init_schedule: str = setting("polynomial", "heuristic the learned schedule starts from (sdm: SDM's schedule from "
                                 "pilots)", choices=SCHEDULE_NAMES + ("sdm",))
    init_from: str = setting("", "indis: a trained GOD predictor file; phi starts at its full set (docs/toy_study.md, "
                             "'The predictor recipe')")
    orders: str = setting("", "per-step solver orders: '' (the solver's), a list 1,4,4,4,4, or sdm (SDM's criterion)")
    afs: bool = setting(False, "analytical first step: nfe network calls on nfe + 1 steps")
    no_instance: bool = setting(False, "ablation: phi without x_T")
    no_shift: bool = setting(False, "ablation: no dtau")
    no_scale: bool = setting(False, "ablation: no gamma")
    no_cond: bool = setting(False, "ablation: phi without the condition")
    hidden: int = setting(128, "predictor width")
    conv_width: int = setting(32, "predictor conv width (image priors)")
    loss: str = setting("mse", "distance to the teacher's endpoint", choices=LOSSES, parse=distance_name)
    lpips_net: str = setting("vgg", "LPIPS trunk", choices=tuple(TRUNK_FILES))
    lpips_weights: Optional[str] = setting(None, "LPIPS trunk weight file or folder (default: the torch hub cache)")
    lr: float = setting(1e-3, "peak learning rate")
    lr_min_factor: float = setting(0.01, "final lr = lr * lr_min_factor (cosine)")
    grad_clip: float = setting(1.0, "max gradient norm (0: off)")
    steps: int = setting(500, "optimisation steps")
    batch_size: int = setting(32, "global batch (split over ranks)")
    val_fraction: float = setting(0.1, "held-out part of the teacher set")
    val_every: int = setting(50, "validate every K steps (and at the end)")
    ckpt_every: int = setting(100, "checkpoint every K steps (and at the end)")
    seed: int = setting(0, "model init, split and data order")
    grad_checkpoint: bool = setting(False, "recompute backbone calls in the backward pass")
    cfg_scale: float = setting(1.0, "classifier-free guidance of the student calls")
    backbone_dtype: str = setting("float32", "backbone precision (float16/bfloat16: torch.autocast)", choices=tuple(DTYPES))
    state_dtype: str = setting("float32", "solver state precision", choices=tuple(DTYPES))
    ld3_ball: float = setting(0.001, "LD3 soft-ball radius factor (0: off)")
    eval_batch_size: int = setting(256, "batch of validation solves")
    pilots: int = setting(128, "peers (gits/dmn/sdm): pilot samples from the training split")
    peer_solvers: str = setting("ipndm,dpmpp_2m,unipc", "peers: comma-separated solvers searched (best on the "
                                "validation split)")
    peer_afs: str = setting("both", "peers: analytical first step off, on, or both (best of)", choices=tuple(AFS_SETTINGS))
    peer_options: str = setting("", 'peers: JSON object of method options (e.g. {"grid_steps": 60} for gits)')

    @classmethod
    def from_dict(cls, d: Dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"training options must be a JSON object of option: value, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        cfg = cls(**d)
        cfg.check_types()
        return cfg

    def check_types(self) -> None:
        """Every option has the type of its field (a bool is not an int; an int is a float): a config file with
        "steps": "x" is a clear ValueError here, not a TypeError deep in the training loop."""
        for f in fields(self):
            v, typ = getattr(self, f.name), str(f.type)
            optional = typ.startswith("Optional[")
            base = typ[len("Optional["):-1] if optional else typ
            if v is None and optional:
                continue
            ok = {"int": isinstance(v, int) and not isinstance(v, bool),
                  "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                  "str": isinstance(v, str), "bool": isinstance(v, bool)}.get(base, True)
            if not ok:
                raise ValueError(f"training option {f.name} must be {'null or ' if optional else ''}{'a' if base != 'int' else 'an'} "
                                 f"{base}, got {v!r}")
            if base == "float" and not isinstance(v, float):
                setattr(self, f.name, float(v))

    def validate(self) -> None:
        self.check_types()
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.nfe < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("nfe, steps and batch_size must be positive")
        if self.val_every < 1 or self.ckpt_every < 1 or self.eval_batch_size < 1 or self.hidden < 1 or self.conv_width < 1:
            raise ValueError("val_every, ckpt_every, eval_batch_size, hidden and conv_width must be positive")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        parse_dtype(self.backbone_dtype)
        parse_dtype(self.state_dtype)
        if (self.orders or self.afs or self.init_schedule == "sdm") and self.method not in ("indis", "god", "ld3"):
            raise ValueError(f"orders / afs / init_schedule sdm apply to indis, god and ld3; {self.method} has its own")
        if self.init_from and (self.method != "indis" or self.init_schedule == "sdm"):
            raise ValueError(f"init_from (a GOD predictor phi starts at) applies to method indis without init_schedule sdm, "
                             f"got method {self.method!r}, init_schedule {self.init_schedule!r}")
        if self.orders and self.orders != "sdm":
            try:
                [int(k) for k in self.orders.split(",")]
            except ValueError:
                raise ValueError(f"orders must be a comma-separated list of integers or 'sdm', got {self.orders!r}") from None
        if self.method in PEER_METHODS:
            parse_afs(self.peer_afs)
            parse_solvers(self.peer_solvers)
            if self.pilots < 1:
                raise ValueError(f"pilots must be positive, got {self.pilots}")
            if self.peer_options:
                opts = json.loads(self.peer_options)
                if not isinstance(opts, dict):
                    raise ValueError(f"peer_options must be a JSON object, got {self.peer_options!r}")


def build_model(cfg: TrainConfig, backbone, init_timesteps: Optional[Tensor] = None) -> nn.Module:
    """The learnable discretization for a config (untrained, starting at cfg.init_schedule, or at init_timesteps
    when given). With AFS it has nfe + 1 steps (the first call is analytical)."""
    cfg.validate()
    if cfg.method in PEER_METHODS:
        raise ValueError(f"{cfg.method} is a training-free peer: train() searches it (indis.baselines.search), build_model has nothing to build")
    proc = backbone.process
    cs = getattr(backbone, "cond_spec", CondSpec())
    steps = cfg.nfe + int(cfg.afs)
    param = DiscretizationParam(proc, steps, warp=cfg.warp, rho=cfg.rho,
                                b_dtau=0.0 if cfg.no_shift else cfg.b_dtau, b_gamma=0.0 if cfg.no_scale else cfg.b_gamma)
    init = init_timesteps if init_timesteps is not None else get_schedule(cfg.init_schedule, proc, steps)
    if cfg.method == "amed":
        k, _ = amed_steps(cfg.nfe)
        return AMEDPlugin(DiscretizationParam(proc, k, b_dtau=0.0, b_gamma=0.0), get_schedule(cfg.init_schedule, proc, k),
                          backbone.data_shape, cs, nfe=cfg.nfe, hidden=cfg.hidden, conv_width=cfg.conv_width)
    if cfg.method == "ld3":
        return LD3Discretization(param, init, backbone.data_shape, cs, use_shift=not cfg.no_shift)
    if cfg.method == "god" or (cfg.no_instance and (cs.kind == "none" or cfg.no_cond)):
        return GlobalDiscretization(param, init, backbone.data_shape, cs)
    text_pool = backbone.text_pooling() if hasattr(backbone, "text_pooling") else None  # phi pools packed text
    phi = Predictor(param, backbone.data_shape, cs, hidden=cfg.hidden, init_timesteps=init,
                    use_instance=not cfg.no_instance, use_cond=not cfg.no_cond, conv_width=cfg.conv_width,
                    text_pool=text_pool)
    if cfg.init_from:
        start_at_global(phi, cfg.init_from, backbone.backbone_id)
    return phi


def start_at_global(phi: Predictor, path, backbone_id: Optional[str] = None) -> None:
    """Set phi's output-head bias to the logits {tau, dtau, gamma} of a trained GOD (GlobalDiscretization) file,
    so that the untrained phi reproduces that global schedule with its shifts and scales. On the 2D tree this
    start raised phi's share of the per-instance oracle's gain the most (docs/toy_study.md, "The predictor
    recipe"). The GOD run must have the same discretization (process, NFE, warp, bounds) and backbone."""
    god, _ = load_predictor(path, backbone_id)
    inner = god.inner if isinstance(god, Sampled) else god
    if not isinstance(inner, GlobalDiscretization):
        raise ValueError(f"init_from {path}: expected a GOD predictor (GlobalDiscretization), got {type(inner).__name__}")
    if inner.param.config() != phi.param.config():
        raise ValueError(f"init_from {path}: its discretization {inner.param.config()} differs from this run's "
                         f"{phi.param.config()} (train GOD with the same nfe, warp, afs and bounds)")
    with torch.no_grad():
        phi.head.bias.copy_(inner.logits.detach().flatten().to(phi.head.bias))


class AutocastBackbone(nn.Module):
    """Runs a backbone under torch.autocast(dtype) and returns float32 (reduced-precision backbone)."""

    def __init__(self, backbone, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = backbone, dtype
        for k in ("process", "prediction_type", "data_shape", "cond_spec"):
            setattr(self, k, getattr(backbone, k))

    def forward(self, x, t, cond=None):
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.inner(x.float(), t, cond)
        return out.float()


def student_backbone(backbone, cfg_scale: float = 1.0, dtype: str = "float32"):
    m = GuidedBackbone(backbone, cfg_scale)
    dt = parse_dtype(dtype)
    return m if dt in (torch.float32, torch.float64) else AutocastBackbone(m, dt)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def split_indices(n: int, val_fraction: float, seed: int):
    """(train positions, validation positions) of a teacher set of n samples; fixed by the seed."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise ValueError(f"a teacher set of {n} samples is too small for a validation split of {val_fraction}")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def batch_positions(step: int, n_train: int, batch: int, seed: int) -> Tensor:
    """Positions (into the train split) of the global batch of a step: epoch-wise random permutations."""
    per_epoch = max(1, n_train // batch)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    if n_train < batch:
        perm = perm.repeat(math.ceil(batch / n_train))
    return perm[k * batch : (k + 1) * batch]


def cosine_lr(step: int, total: int, lr: float, min_factor: float) -> float:
    return lr * (min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def _opt_to_tensors(opt: torch.optim.Optimizer):
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v)
    return tensors, sd["param_groups"]


def _opt_from_tensors(opt: torch.optim.Optimizer, tensors: Dict[str, Tensor], groups) -> None:
    state: Dict[int, Dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


@torch.no_grad()
def evaluate_split(model, backbone, teacher: TeacherDataset, positions: Tensor, distance, cfg: TrainConfig, device=None) -> Dict[str, float]:
    """Mean distance and MSE of the student endpoint to the teacher's on the given positions."""
    sd = parse_dtype(cfg.state_dtype)
    tot_d = tot_m = 0.0
    for lo in range(0, len(positions), cfg.eval_batch_size):
        idx = positions[lo : lo + cfg.eval_batch_size]
        x_T, cond, x0s = teacher.batch(idx, device, sd)
        x0 = solve(model, backbone, x_T, cond, cfg.solver, cfg.order, sd)
        tot_d += float(distance(x0, x0s).sum())
        tot_m += float(mse(x0, x0s).sum())
    n = len(positions)
    return {"distance": tot_d / n, "mse": tot_m / n}


def train_peer(backbone, teacher, cfg: TrainConfig, out_dir, log=None, device=None, on_done=None) -> Dict:
    """`train` for the training-free peers: pilots from the training split (the first cfg.pilots of a seeded
    permutation), selection on the validation split with the configured distance; writes predictor.safetensors."""
    rank, _ = _dist()
    bid = backbone.backbone_id
    if teacher.backbone_id != bid:
        raise ValueError(f"the teacher dataset was made for backbone id {teacher.backbone_id}, but the backbone has id {bid}")
    dev = torch.device(device) if device is not None else next((p.device for p in backbone.parameters()), torch.device("cpu"))
    sd = parse_dtype(cfg.state_dtype)
    net = student_backbone(backbone, cfg.cfg_scale, cfg.backbone_dtype)
    train_pos, val_pos = split_indices(len(teacher), cfg.val_fraction, cfg.seed)
    x_p, c_p = _pilot_batch(cfg, teacher, train_pos, dev, sd)
    x_v, c_v, x0_v = teacher.batch(val_pos, dev, sd)
    distance = get_distance(cfg.loss, cfg.lpips_net, cfg.lpips_weights, dev)
    options = json.loads(cfg.peer_options) if cfg.peer_options else {}
    model, rep = select(cfg.method, backbone, cfg.nfe, (x_p, c_p), (x_v, c_v, x0_v), parse_solvers(cfg.peer_solvers),
                        parse_afs(cfg.peer_afs), distance, options, net=net, log=log)
    # the reference a trained method starts from: cfg.init_schedule sampled with cfg.solver
    init = peer_schedule(net, get_schedule(cfg.init_schedule, backbone.process, cfg.nfe), cfg.solver, cfg.order,
                         method=f"heuristic:{cfg.init_schedule}")
    initial_val = score(init, net, x_v, c_v, x0_v, distance)["distance"]
    meta = {
        "method": cfg.method,
        "nfe": cfg.nfe,
        "solver": model.solver_name,
        "afs": model.afs,
        "process": backbone.process.config(),
        "backbone_id": bid,
        "train_config": json.loads(json.dumps(asdict(cfg))),
        "teacher": {"root": str(teacher.root), "teacher": teacher.manifest["teacher"], "count": len(teacher)},
        "metrics": {"best_val": rep["best_val"], "initial_val": initial_val, "best_step": 0, "search": rep,
                    "train_seconds_this_run": rep["search_seconds"]},
        "params": 0,
    }
    if rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_predictor(Path(out_dir) / "predictor.safetensors", model, meta)
    if on_done is not None:
        on_done(model)
    return meta


def _pilot_batch(cfg: TrainConfig, teacher, train_pos: Tensor, dev, sd) -> Tuple[Tensor, object]:
    """(x_T, cond) of cfg.pilots training samples (a seeded choice, in dataset order): the peers' pilots."""
    perm = torch.randperm(len(train_pos), generator=torch.Generator().manual_seed(cfg.seed + 104729))
    x_p, c_p, _ = teacher.batch(train_pos[perm[: min(cfg.pilots, len(train_pos))].sort().values], dev, sd)
    return x_p, c_p


def _with_sampler_options(cfg: TrainConfig, backbone, net, teacher, train_pos, dev, sd) -> nn.Module:
    """build_model, started from SDM's schedule when init_schedule is sdm, and wrapped with per-step orders and AFS
    (indis.baselines.common.Sampled) when asked for; SDM's schedule and orders come from cfg.pilots training pilots."""
    init = orders = None
    if cfg.init_schedule == "sdm" or cfg.orders == "sdm":
        x_p, c_p = _pilot_batch(cfg, teacher, train_pos, dev, sd)
        steps = cfg.nfe + int(cfg.afs)
        if cfg.init_schedule == "sdm":  # SDM's schedule comes with its order schedule on it
            init, sdm_orders, _ = sdm.sdm_schedule(net, x_p, c_p, steps, solver=cfg.solver, afs=cfg.afs)
            if cfg.orders == "sdm":
                orders = sdm_orders
        elif cfg.orders == "sdm":
            base = get_schedule(cfg.init_schedule, backbone.process, steps)
            orders, _ = sdm.order_schedule(net, x_p, c_p, base, cfg.solver, afs=cfg.afs)
    elif cfg.orders:
        orders = [int(k) for k in cfg.orders.split(",")]
    model = build_model(cfg, backbone, init)
    if orders is None and not cfg.afs:
        return model
    return Sampled(model, cfg.solver, cfg.order, orders, cfg.afs)


def _module(m):
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def config_differences(recorded, cfg: Dict) -> List[str]:
    """The settings in which a run recorded with the training config `recorded` (the JSON dict in its run.json,
    checkpoint or predictor metadata) differs from the config `cfg` (asdict of a TrainConfig). A setting the record
    lacks was added to TrainConfig after the run and counts as its default (a new setting's default keeps the earlier
    behaviour), so adding a setting does not turn every finished run into a stranger."""
    cfg = json.loads(json.dumps(cfg))
    if not isinstance(recorded, dict):
        return sorted(cfg)
    old = {**json.loads(json.dumps(asdict(TrainConfig()))), **recorded}
    return sorted(k for k in set(cfg) | set(old) if old.get(k) != cfg.get(k))


def same_config(recorded, cfg: Dict) -> bool:
    """Whether a run recorded with `recorded` is a run of `cfg` (no config_differences)."""
    return not config_differences(recorded, cfg)


def _check_same_run(path: Path, meta: Dict, bid: str, teacher: TeacherDataset, cfg_json: Dict) -> None:
    """Refuse to continue a run (its checkpoint or run.json `meta`) with another backbone, teacher or config."""
    if meta.get("backbone_id") != bid:
        raise ValueError(f"{path} belongs to backbone id {meta.get('backbone_id')}, not {bid}; resume with the backbone "
                         "the run started with, or train into another folder")
    fp = meta.get("teacher_fingerprint")
    if fp is not None:
        same_teacher = fp == teacher.fingerprint
    else:  # checkpoints written before fingerprints: the teacher's folder
        same_teacher = Path(str(meta.get("teacher"))).resolve() == Path(teacher.root).resolve()
    if not same_teacher:
        raise ValueError(f"{path} was trained on another teacher dataset ({meta.get('teacher')}) than {teacher.root}; "
                         "resuming would mix two training and validation sets. Resume with the run's teacher, or train "
                         "into another folder")
    diff = config_differences(meta.get("config"), cfg_json)
    if diff:
        raise ValueError(f"{path} was written with other settings ({', '.join(diff)}); resume with the same options")


def check_run_folder(out_dir, resume: bool = False, overwrite: bool = False) -> Path:
    """What `indis train --out` checks before any work: a writable folder that is no teacher dataset or export
    folder, and, without resume, no earlier run there unless overwrite."""
    out = claim_folder(out_dir, TRAINING_RUN, "train")
    ckpt, pred = out / "checkpoint.safetensors", out / "predictor.safetensors"
    if not resume and not overwrite and (ckpt.is_file() or pred.is_file()):
        what = "a checkpoint" if ckpt.is_file() else "a trained predictor"
        raise FileExistsError(f"--out {out} already holds {what} of a training run; pass --resume to continue it or "
                              "--overwrite to delete it and start again (or choose another folder)")
    return out


def _claim_run(out_dir, bid: str, teacher: TeacherDataset, cfg_json: Dict, resume: bool, overwrite: bool, rank: int) -> Path:
    """The run folder, checked before any work (see train), with run.json written for this run."""
    out = check_run_folder(out_dir, resume, overwrite)
    marker, ckpt, pred = out / RUN_MARKER, out / "checkpoint.safetensors", out / "predictor.safetensors"
    run = {"format": RUN_FORMAT, "backbone_id": bid, "teacher": str(teacher.root), "teacher_fingerprint": teacher.fingerprint,
           "config": cfg_json}
    if resume and marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except ValueError as e:
            raise ValueError(f"{marker} is not valid JSON ({e}); the run folder is damaged") from None
        if not isinstance(old, dict):
            raise ValueError(f"{marker} is not a JSON object; the run folder is damaged")
        _check_same_run(marker, old, bid, teacher, cfg_json)
    elif not resume and rank == 0:  # (an earlier run is only still there with overwrite: delete it, never mix)
        ckpt.unlink(missing_ok=True)
        pred.unlink(missing_ok=True)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, run)
    return out


def train(
    backbone,
    teacher: TeacherDataset,
    cfg: TrainConfig,
    out_dir,
    resume: bool = False,
    progress: bool = True,
    device=None,
    stop_after: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
    on_done: Optional[Callable[[nn.Module], None]] = None,
    overwrite: bool = False,
) -> Dict:
    """Train per cfg; writes out_dir/run.json (what the run is: backbone, teacher, config),
    out_dir/checkpoint.safetensors (resumable) and out_dir/predictor.safetensors (the best validation weights,
    loadable with indis.sampling.load.load_predictor). Returns the final metadata.
    resume: continue from the checkpoint; the backbone, the teacher dataset and the config must be the ones the
    run started with. Without resume an existing run (checkpoint or predictor) is refused unless overwrite,
    which deletes it first. A folder of another kind (teacher dataset, export folder) is always refused.
    stop_after: stop (as if killed) once this many steps are done, after the checkpoint of that step if any.
    on_done: called with the trained model (final weights) on every rank."""
    cfg.validate()
    if cfg.method in PEER_METHODS:
        return train_peer(backbone, teacher, cfg, out_dir, log=log, device=device, on_done=on_done)
    rank, world = _dist()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    bid = backbone.backbone_id
    if teacher.backbone_id != bid:
        raise ValueError(f"the teacher dataset was made for backbone id {teacher.backbone_id}, but the backbone has id {bid}")
    cfg_json = json.loads(json.dumps(asdict(cfg)))
    out = _claim_run(out_dir, bid, teacher, cfg_json, resume, overwrite, rank)
    dev = torch.device(device) if device is not None else next((p.device for p in backbone.parameters()), torch.device("cpu"))
    for p in backbone.parameters():
        p.requires_grad_(False)
    net = student_backbone(backbone, cfg.cfg_scale, cfg.backbone_dtype)
    sd = parse_dtype(cfg.state_dtype)
    distance = get_distance(cfg.loss, cfg.lpips_net, cfg.lpips_weights, dev)
    train_pos, val_pos = split_indices(len(teacher), cfg.val_fraction, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = _with_sampler_options(cfg, backbone, net, teacher, train_pos, dev, sd).to(dev)
    run_solver, run_order, run_net = model.sampling(cfg.solver, cfg.order, net) if hasattr(model, "sampling") else (cfg.solver, cfg.order, net)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    use_ball = cfg.method == "ld3" and cfg.ld3_ball > 0
    z0 = z = None
    radius = ball_radius(backbone.data_shape, cfg.nfe, cfg.ld3_ball) if use_ball else 0.0
    if use_ball:
        z0 = teacher.x_T(train_pos, dtype=torch.float32) / teacher.prior_std
        z = z0.clone()
    start, history = 0, []
    best = {"val": math.inf, "step": 0, "state": copy.deepcopy(model.state_dict())}
    ckpt = out / "checkpoint.safetensors"
    if resume and ckpt.is_file():
        tensors, meta = load_tensors(ckpt)
        _check_same_run(ckpt, meta, bid, teacher, cfg_json)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        missing = [k for k in ("opt_groups", "best_val", "best_step", "step", "history") if k not in meta]
        if missing or (use_ball and "ld3_z" not in tensors):
            raise ValueError(f"{ckpt} lacks {missing or ['ld3_z']}: the checkpoint is damaged; start again with --overwrite")
        _opt_from_tensors(opt, tensors, meta["opt_groups"])
        best = {"val": meta["best_val"], "step": meta["best_step"], "state": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}}
        if use_ball:
            z = tensors["ld3_z"].clone()
        start, history = meta["step"], meta["history"]
    elif resume and log:
        log(f"no checkpoint at {ckpt}; starting from scratch")
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model)

    def save_ckpt(step):
        if rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in best["state"].items()})
        ot, groups = _opt_to_tensors(opt)
        tensors.update(ot)
        if use_ball:
            tensors["ld3_z"] = z
        save_tensors(ckpt, tensors, {"step": step, "config": cfg_json, "backbone_id": bid, "opt_groups": groups,
                                     "best_val": best["val"], "best_step": best["step"], "history": history,
                                     "teacher": str(teacher.root), "teacher_fingerprint": teacher.fingerprint})

    def validate(step):
        m = evaluate_split(model, net, teacher, val_pos, distance, cfg, dev)
        m["step"] = step
        history.append(m)
        if m["distance"] < best["val"]:
            best.update(val=m["distance"], step=step, state=copy.deepcopy(model.state_dict()))
        return m

    if start == 0 and not history:
        validate(0)  # the initial (heuristic) schedule: the baseline the training must beat
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.method} NFE {cfg.nfe}", unit="step")
    t_start = time.time()
    step = start
    for step in range(start + 1, cfg.steps + 1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step - 1, cfg.steps, cfg.lr, cfg.lr_min_factor)
        gpos = batch_positions(step - 1, len(train_pos), cfg.batch_size, cfg.seed)
        lpos = gpos[rank::world]
        idx = train_pos[lpos]
        x_T, cond, x0s = teacher.batch(idx, dev, sd)
        if use_ball:
            x_T = (z[lpos] * teacher.prior_std).to(dev, sd).requires_grad_(True)
        if getattr(model, "runs_sampler", False):  # AMED-Plugin: its forward is the solve
            x0 = ddp(x_T, cond, net, state_dtype=sd, checkpoint=cfg.grad_checkpoint)
        else:
            disc = ddp(x_T, cond)
            x0 = sample(run_net, x_T, disc, solver=run_solver, order=run_order, cond=cond, state_dtype=sd, checkpoint=cfg.grad_checkpoint)
        per = distance(x0, x0s)
        loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if use_ball:
            zl = z[lpos].to(dev, sd)
            prop = ball_proposal(zl, z0[lpos].to(dev, sd), x_T.grad / teacher.prior_std, radius)
            with torch.no_grad():
                xp = prop * teacher.prior_std
                new = distance(sample(run_net, xp, model(xp, cond), solver=run_solver, order=run_order, cond=cond, state_dtype=sd), x0s)
            keep = (new < per.detach()).view(-1, *([1] * (zl.dim() - 1)))
            znew = torch.where(keep, prop, zl).float().cpu()
            if world > 1:
                parts = [torch.empty_like(znew) for _ in range(world)]
                torch.distributed.all_gather(parts, znew)
                for r in range(world):
                    z[gpos[r::world]] = parts[r]
            else:
                z[lpos] = znew
        lval = loss.detach()
        if world > 1:
            torch.distributed.all_reduce(lval)
            lval = lval / world
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(lval):.4g}", best_val=f"{best['val']:.4g}")
        if step % cfg.val_every == 0 or step == cfg.steps:
            validate(step)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_ckpt(step)
        if stop_after is not None and step >= stop_after and step < cfg.steps:
            if bar is not None:
                bar.close()
            return {"stopped_at": step}
    if bar is not None:
        bar.close()
    final_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best["state"])
    meta = {
        "method": cfg.method,
        "nfe": cfg.nfe,
        "solver": cfg.solver,
        "process": backbone.process.config(),
        "warp": cfg.warp,
        "bounds": {"b_dtau": model.param.b_dtau, "b_gamma": model.param.b_gamma},
        "backbone_id": bid,
        "train_config": cfg_json,
        "teacher": {"root": str(teacher.root), "teacher": teacher.manifest["teacher"], "count": len(teacher)},
        "metrics": {"best_val": best["val"], "best_step": best["step"], "initial_val": history[0]["distance"] if history else None,
                    "history": history, "train_seconds_this_run": time.time() - t_start},
        "params": sum(p.numel() for p in model.parameters()),
    }
    if rank == 0:
        save_predictor(out / "predictor.safetensors", model, meta)
    model.load_state_dict(final_state)
    if on_done is not None:
        on_done(model)
    return meta
