"""The second bundled model: a class-conditional latent flow-matching model in diffusers format.

Like the models users run (SD3/FLUX, DiT) and unlike the first bundled model (indis.backbones.bundled, a pixel-
space EDM network), it is conditional, latent, flow matching and guided. Trained by this project on scikit-learn's
digits (indis.data.digits: 16x16, the same 1500-image train split; the 297 held-out digits are never seen):

* VAE: diffusers `AutoencoderKL`, 16x16x1 pixels in [-1, 1] <-> 8x8x4 latents (two encoder blocks, channels
  (32, 64), one layer per block, no mid-block attention). Loss per image: sum of squared reconstruction errors
  + kl_weight * KL(q(z|x) || N(0, I)) (Kingma & Welling 2014; the small-KL regularisation of latent diffusion,
  Rombach et al. 2022), decoding a posterior sample. Its `scaling_factor` is 1 / std of the training latents.
* Denoiser: diffusers `DiTTransformer2DModel` (Peebles & Xie 2023, adaLN-Zero) on the scaled latents, patch 2,
  10 classes + the null class (index 10) of its label embedding for classifier-free guidance (Ho & Salimans
  2021). Label dropout: 10% of the labels are replaced by the null class with our own generator; the model is
  run in eval mode during training, because in train mode each of diffusers' DiT blocks drops labels on its
  own (every block has its own label table), which would almost never show the model a fully null condition.
* Flow matching OT / rectified flow (Lipman et al. 2023; Liu et al. 2023): x_t = (1 - t) x0 + t eps, target
  v = eps - x0, t ~ logit-normal(0, 1) (SD3, Esser et al. 2024); the model's timestep is 1000 t. EMA of the
  weights (half-life in steps). Sampling: `FlowMatchEulerDiscreteScheduler` (shift `FlowTrainConfig.shift`),
  guidance v = v_null + w (v_class - v_null).

Saved as a diffusers pipeline folder (indis/assets/bundled_flow: model_index.json naming `DiTPipeline` with
id2label, transformer/, vae/, scheduler/) that `diffusers.DiffusionPipeline.from_pretrained(folder)` loads. Note
that DiTPipeline.__call__ itself cannot run a FlowMatchEulerDiscreteScheduler (it calls scale_model_input,
which that scheduler lacks) and uses ImageNet's null class 1000: sample the loaded pipeline object with
`indis.pipelines.IndisPipeline.from_pipe(pipe, predictor)` (the diffusers adapter's `dit` family), with
`sample_latents` here, or through INDIS (`BundledFlowBackbone`, backbone spec `bundled-flow`).

Training (`train_bundled_flow`, CLI `indis train-flow-backbone`) is resumable: atomic training-state
checkpoints per stage (vae_state.pt, flow_state.pt, with RNG states) and the finished VAE (vae_final.pt); it is
deterministic for a given seed and thread count.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data.digits import load_digits_split
from ..io import atomic_savefig, atomic_torch_save, atomic_write_json
from ..metrics.fid import EXTRACTOR_NAME, digits_fid, load_digits_features
from ..options import setting
from ..processes import FlowOTProcess
from ..sampling.guidance import GuidedBackbone
from ..solvers import sample
from .base import Backbone, CondSpec, parse_dtype
from .bundled import ASSETS_DIR, ema_update, optimizer_step, save_grid
from .diffusers import dit_class_labels, require_diffusers
from .flow import default_timesteps

Tensor = torch.Tensor

FLOW_STEM = "bundled_flow"
N_CLASSES = 10
NULL_CLASS = N_CLASSES  # the extra row of the DiT label table (LabelEmbedding: num_classes + 1 rows)


def bundled_flow_paths(assets_dir: Optional[str] = None) -> Dict[str, str]:
    d = assets_dir or ASSETS_DIR
    return {
        "pipeline": os.path.join(d, FLOW_STEM),
        "training": os.path.join(d, FLOW_STEM + "_training.json"),
        "loss_json": os.path.join(d, FLOW_STEM + "_loss.json"),
        "loss_png": os.path.join(d, FLOW_STEM + "_loss.png"),
        "samples_png": os.path.join(d, FLOW_STEM + "_samples.png"),
        "quality": os.path.join(d, FLOW_STEM + "_quality.json"),
    }


@dataclass
class FlowTrainConfig:
    resolution: int = 16
    seed: int = setting(0, "initialisation and data order")
    threads: int = setting(1, "torch CPU threads")
    ckpt_every: int = 200
    # VAE
    vae_channels: List[int] = field(default_factory=lambda: [32, 64])
    latent_channels: int = 4
    vae_steps: int = setting(1000, "VAE optimizer steps")
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    # flow model (DiT)
    dit_layers: int = 6
    dit_heads: int = 4
    dit_head_dim: int = 32
    patch_size: int = 2
    steps: int = setting(3000, "flow DiT optimizer steps")
    batch_size: int = setting(64, "batch size of the flow DiT")
    lr: float = 5e-4
    warmup_steps: int = 100
    ema_halflife_steps: float = 250.0
    label_dropout: float = 0.1
    grad_clip: float = 1.0  # max gradient norm (0: off)
    shift: float = 1.0  # FlowMatchEulerDiscreteScheduler shift of the default sampling schedule

    def vae_kwargs(self) -> Dict:
        n = len(self.vae_channels)
        return dict(in_channels=1, out_channels=1, down_block_types=["DownEncoderBlock2D"] * n,
                    up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=list(self.vae_channels),
                    layers_per_block=1, latent_channels=self.latent_channels, norm_num_groups=min(32, self.vae_channels[0]),
                    sample_size=self.resolution, mid_block_add_attention=False)

    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)

    def dit_kwargs(self) -> Dict:
        return dict(num_attention_heads=self.dit_heads, attention_head_dim=self.dit_head_dim,
                    in_channels=self.latent_channels, out_channels=self.latent_channels, num_layers=self.dit_layers,
                    sample_size=self.latent_size(), patch_size=self.patch_size, num_embeds_ada_norm=N_CLASSES,
                    norm_num_groups=32)


# ------------------------------------------------------------------------------------------------
# the INDIS backbone
# ------------------------------------------------------------------------------------------------
class BundledFlowBackbone(Backbone):
    """The bundled latent flow model as an INDIS backbone: process flow (t0 0.002, T 0.988), prediction
    "velocity", data_shape = the latent shape [4, 8, 8], condition CondSpec("class", 10). An all-zero one-hot
    condition (the null condition of indis.training.teacher.GuidedBackbone) selects the DiT's null class, so
    GuidedBackbone gives classifier-free guidance. `decode(latents)` maps latents to 16x16 pixels in [-1, 1]."""

    #: the guidance scale the quickstart and benchmarks use by default: the class accuracy of 50-step samples rises from
    #: 95.0% unguided to 99.5% at 1.5 while their FD to held-out digits grows from 57 to 86 (bundled_flow_quality.json)
    default_guidance = 1.5

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, shift: float = 1.0,
                 t0: float = 0.002, T: float = 0.988, timestep_scale: float = 1000.0):
        require_diffusers()
        c = transformer.config
        if int(c.num_embeds_ada_norm or 0) < 1:
            raise ValueError("BundledFlowBackbone needs a class-conditional DiTTransformer2DModel (num_embeds_ada_norm >= 1)")
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        super().__init__(FlowOTProcess(t0=t0, T=T), "velocity", (c.in_channels, c.sample_size, c.sample_size),
                         CondSpec("class", int(c.num_embeds_ada_norm)))
        self.transformer = transformer
        self.vae = vae
        self.shift = float(shift)
        self.timestep_scale = float(timestep_scale)
        self.null_class = int(c.num_embeds_ada_norm)

    @classmethod
    def from_pretrained_dir(cls, path: str, **kwargs) -> "BundledFlowBackbone":
        """Load from a LOCAL pipeline folder (local_files_only; never downloads). The shift is read from its
        scheduler/ config unless given."""
        require_diffusers()
        from diffusers import AutoencoderKL, DiTTransformer2DModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a local pipeline folder (indis never downloads models)")
        for sub in ("transformer", "vae", "scheduler"):
            if not os.path.isdir(os.path.join(path, sub)):
                raise FileNotFoundError(f"{path} lacks the {sub}/ folder of a bundled-flow pipeline")
        transformer = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
        if "shift" not in kwargs:
            with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
                kwargs["shift"] = float(json.load(f).get("shift", 1.0))
        return cls(transformer.eval(), vae.eval(), **kwargs)

    def config(self) -> Dict:
        cfg = super().config()

        def plain(m):
            return {k: v for k, v in dict(m.config).items() if not k.startswith("_")}

        cfg.update(transformer_class=type(self.transformer).__name__, transformer_config=plain(self.transformer),
                   vae_class=type(self.vae).__name__, vae_config=plain(self.vae), shift=self.shift,
                   timestep_scale=self.timestep_scale, null_class=self.null_class)
        return cfg

    @property
    def image_seq_len(self) -> int:
        """The DiT's image token count (latent height x width / patch^2): the sequence length of the RDS schedule."""
        c = self.transformer.config
        return int((c.sample_size // c.patch_size) ** 2)

    def default_timesteps(self, n: int) -> Tensor:
        return default_timesteps(n, self.shift, self.process.t0, self.process.T)

    def labels(self, cond: Optional[Tensor], batch: int, device) -> Tensor:
        """Class indices for the DiT: argmax of a one-hot row, the null class for an all-zero row (or no cond)."""
        return dit_class_labels(cond, self.null_class, batch, device)

    def predict(self, x, t, cond):
        dtype = next(self.transformer.parameters()).dtype
        y = self.labels(cond, x.shape[0], x.device)
        out = self.transformer(x.to(dtype), timestep=(t * self.timestep_scale).to(dtype), class_labels=y,
                               return_dict=False)[0]
        return out.to(x.dtype)

    def forward(self, x, t, cond=None):
        # cond None = the null class (unconditional prediction); otherwise validated like any backbone
        if cond is None:
            t, _ = self.check_inputs(x, t, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
            return self.predict(x, t, None)
        return super().forward(x, t, cond)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, 4, 8, 8] (scaled, as the flow model sees them) -> pixels [B, 1, 16, 16] in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(dtype) / float(self.vae.config.scaling_factor)
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Pixels [B, 1, 16, 16] in [-1, 1] -> scaled latents (posterior means)."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(dtype)).latent_dist.mean.float() * float(self.vae.config.scaling_factor)


def load_bundled_flow(path: Optional[str] = None, compute_dtype: Optional[str] = None) -> BundledFlowBackbone:
    """The bundled latent flow backbone from its diffusers folder (default indis/assets/bundled_flow)."""
    path = path or bundled_flow_paths()["pipeline"]
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"the bundled flow pipeline {path} is missing; reinstall indis or rebuild it with "
                                "`indis train-flow-backbone`")
    bb = BundledFlowBackbone.from_pretrained_dir(path)
    if compute_dtype is not None:
        bb = bb.to(parse_dtype(compute_dtype))
    return bb.eval()


# ------------------------------------------------------------------------------------------------
# sampling with the diffusers scheduler
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_latents(transformer, scheduler, labels: Tensor, steps: int = 50, guidance: float = 1.0,
                   generator: Optional[torch.Generator] = None, latents: Optional[Tensor] = None) -> Tensor:
    """Euler flow sampling with a FlowMatchEulerDiscreteScheduler (set_timesteps(steps), step()); classifier-free
    guidance v = v_null + guidance (v_class - v_null) with the DiT's null class when guidance != 1."""
    c = transformer.config
    b = labels.shape[0]
    shape = (b, c.in_channels, c.sample_size, c.sample_size)
    x = torch.randn(shape, generator=generator) if latents is None else latents.clone()
    null = torch.full_like(labels, int(c.num_embeds_ada_norm))
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        tb = t.expand(b).float()
        if guidance == 1.0:
            v = transformer(x, timestep=tb, class_labels=labels, return_dict=False)[0]
        else:
            out = transformer(torch.cat([x, x]), timestep=torch.cat([tb, tb]), class_labels=torch.cat([labels, null]),
                              return_dict=False)[0]
            vc, vu = out.chunk(2)
            v = vu + guidance * (vc - vu)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def _check_resume(st: Dict, cfg: FlowTrainConfig, path: str, volatile: Sequence[str]) -> None:
    a = {k: v for k, v in st["config"].items() if k not in volatile}
    b = {k: v for k, v in asdict(cfg).items() if k not in volatile}
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"{path} was written with a different training config ({', '.join(diff)}); remove it or pass resume=False")


VOLATILE = ("steps", "vae_steps", "ckpt_every", "threads")


def _load_training_state(path: str, cfg: FlowTrainConfig, modules: Dict[str, torch.nn.Module], opt, gen) -> Tuple[int, List, float]:
    """Restore a training state written with the same config (modules by key, optimizer, generator):
    (step, history, elapsed seconds)."""
    st = torch.load(path, map_location="cpu", weights_only=True)
    _check_resume(st, cfg, path, VOLATILE)
    for key, module in modules.items():
        module.load_state_dict(st[key])
    opt.load_state_dict(st["opt"])
    gen.set_state(st["gen"])
    return int(st["step"]), [list(h) for h in st["history"]], float(st["elapsed"])


def vae_loss(vae, x: Tensor, gen: torch.Generator, kl_weight: float):
    """(loss, per-pixel MSE): per-image sum of squared errors of decoding a posterior sample + kl_weight KL."""
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    se = ((rec - x) ** 2).flatten(1).sum(1)
    kl = post.kl()
    return (se + kl_weight * kl).mean(), se.mean() / x[0].numel()


def _train_vae(cfg: FlowTrainConfig, data: Tensor, out_dir: str, resume: bool, progress: bool, log_every: int):
    from diffusers import AutoencoderKL

    final_path = os.path.join(out_dir, "vae_final.pt")
    state_path = os.path.join(out_dir, "vae_state.pt")
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**cfg.vae_kwargs())
    if resume and os.path.isfile(final_path):
        st = torch.load(final_path, map_location="cpu", weights_only=True)
        _check_resume(st, cfg, final_path, VOLATILE)
        vae.load_state_dict(st["vae"])
        return vae, st["history"], float(st["elapsed"])
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    step, history, elapsed = 0, [], 0.0
    if resume and os.path.isfile(state_path):
        step, history, elapsed = _load_training_state(state_path, cfg, {"vae": vae}, opt, gen)

    def save(path, final=False):
        d = {"config": asdict(cfg), "vae": vae.state_dict(), "step": step, "history": history, "elapsed": elapsed}
        if not final:
            d.update(opt=opt.state_dict(), gen=gen.get_state())
        atomic_torch_save(path, d)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.vae_steps, initial=step, desc="train VAE", mininterval=10.0)
    vae.train()
    t_start = time.time() - elapsed
    n = data.shape[0]
    while step < cfg.vae_steps:
        x = data[torch.randint(0, n, (cfg.vae_batch_size,), generator=gen)]
        loss, mse = vae_loss(vae, x, gen, cfg.kl_weight)
        optimizer_step(opt, loss, vae.parameters(), cfg.vae_lr, step, cfg.warmup_steps, cfg.grad_clip)
        step += 1
        history.append([step, loss.item(), mse.item()])
        elapsed = time.time() - t_start
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(loss=f"{sum(h[1] for h in history[-log_every:]) / log_every:.4f}",
                                mse=f"{sum(h[2] for h in history[-log_every:]) / log_every:.5f}")
        if step % cfg.ckpt_every == 0:
            save(state_path)
    if bar is not None:
        bar.close()
    vae.eval()
    save(final_path, final=True)
    return vae, history, elapsed


@torch.no_grad()
def _latent_stats(vae, data: Tensor, seed: int):
    """Posterior means and stds of all images, and the scaling factor 1 / std of posterior samples."""
    means, stds = [], []
    for lo in range(0, data.shape[0], 256):
        post = vae.encode(data[lo: lo + 256]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    m, s = torch.cat(means), torch.cat(stds)
    z = m + s * torch.randn(m.shape, generator=torch.Generator().manual_seed(seed))
    return m, s, 1.0 / float(z.std())


@torch.no_grad()
def vae_reconstruction(vae, x: Tensor) -> Tensor:
    """Decode the posterior means of x (no sampling), clipped to [-1, 1]."""
    return torch.cat([vae.decode(vae.encode(x[lo: lo + 256]).latent_dist.mean).sample for lo in range(0, x.shape[0], 256)]).clamp(-1, 1)


def train_bundled_flow(out_dir: str, config: Optional[FlowTrainConfig] = None, resume: bool = True,
                       progress: bool = True, log_every: int = 50, export_dir: Optional[str] = None) -> BundledFlowBackbone:
    """Train the VAE, then the flow DiT on its latents; export the diffusers pipeline folder and the loss curves
    (bundled_flow_paths(export_dir), default the package's assets). out_dir holds the training states."""
    require_diffusers()
    from diffusers import DiTTransformer2DModel


    cfg = config or FlowTrainConfig()
    if min(cfg.steps, cfg.vae_steps, cfg.batch_size, cfg.vae_batch_size) < 1:
        raise ValueError("steps, vae_steps and the batch sizes must be positive")
    torch.set_num_threads(max(1, int(cfg.threads)))
    os.makedirs(out_dir, exist_ok=True)
    data, labels = load_digits_split("train", resolution=cfg.resolution)
    held, _ = load_digits_split("heldout", resolution=cfg.resolution)

    vae, vae_hist, vae_time = _train_vae(cfg, data, out_dir, resume, progress, log_every)
    vae.requires_grad_(False)
    rec = vae_reconstruction(vae, held)
    vae_mse_held = float(((rec - held) ** 2).mean())
    lat_m, lat_s, scaling = _latent_stats(vae, data, cfg.seed + 21)
    vae.register_to_config(scaling_factor=scaling)

    state_path = os.path.join(out_dir, "flow_state.pt")
    torch.manual_seed(cfg.seed + 1)
    net = DiTTransformer2DModel(**cfg.dit_kwargs())
    ema = DiTTransformer2DModel(**cfg.dit_kwargs())
    ema.load_state_dict(net.state_dict())
    ema.eval().requires_grad_(False)
    # eval mode while training: our label dropout below replaces the per-block dropout of diffusers' DiT
    net.eval()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    step, history, elapsed = 0, [], 0.0
    if resume and os.path.isfile(state_path):
        step, history, elapsed = _load_training_state(state_path, cfg, {"net": net, "ema": ema}, opt, gen)

    def save_state():
        atomic_torch_save(state_path, {"config": asdict(cfg), "net": net.state_dict(), "ema": ema.state_dict(),
                                       "opt": opt.state_dict(), "gen": gen.get_state(), "step": step, "history": history,
                                       "elapsed": elapsed})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train flow DiT", mininterval=10.0)
    t_start = time.time() - elapsed
    n = data.shape[0]
    while step < cfg.steps:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        z0 = (lat_m[idx] + lat_s[idx] * torch.randn(lat_m[idx].shape, generator=gen)) * scaling
        y = labels[idx].clone()
        y[torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout] = NULL_CLASS
        t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen)).clamp(1e-4, 1 - 1e-4)
        eps = torch.randn(z0.shape, generator=gen)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * z0 + tt * eps
        v = net(xt, timestep=t * 1000.0, class_labels=y, return_dict=False)[0]
        loss = ((v - (eps - z0)) ** 2).mean()
        optimizer_step(opt, loss, net.parameters(), cfg.lr, step, cfg.warmup_steps, cfg.grad_clip)
        step += 1
        ema_update(ema, net, step, cfg.ema_halflife_steps)
        history.append([step, loss.item()])
        elapsed = time.time() - t_start
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(loss=f"{sum(h[1] for h in history[-log_every:]) / log_every:.4f}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_state()
    if bar is not None:
        bar.close()

    paths = bundled_flow_paths(export_dir)
    save_pipeline(ema, vae, cfg.shift, paths["pipeline"])
    final = [h[1] for h in history[-200:]]
    info = {"config": asdict(cfg), "source": "indis train-flow-backbone", "torch": torch.__version__,
            "dataset": "sklearn.datasets.load_digits, train split (1500 images) of indis.data.digits, bilinear 16x16",
            "vae": {"steps": len(vae_hist), "wall_time_s": round(vae_time, 1),
                    "params": sum(p.numel() for p in vae.parameters()), "scaling_factor": scaling,
                    "heldout_reconstruction_mse": vae_mse_held,
                    "heldout_reconstruction_psnr_db": 10 * math.log10(4.0 / vae_mse_held),
                    "final_train_mse_mean_last100": sum(h[2] for h in vae_hist[-100:]) / len(vae_hist[-100:])},
            "flow": {"steps": step, "wall_time_s": round(elapsed, 1), "params": sum(p.numel() for p in ema.parameters()),
                     "final_loss_mean_last200": sum(final) / len(final)},
            "wall_time_s_total": round(vae_time + elapsed, 1)}
    atomic_write_json(paths["training"], info)
    atomic_write_json(paths["loss_json"], {"vae_step_loss_mse": vae_hist, "flow_step_loss": history})
    plot_flow_losses(vae_hist, history, paths["loss_png"])
    bb = BundledFlowBackbone(ema, vae, shift=cfg.shift)
    return bb.eval()


def save_pipeline(transformer, vae, shift: float, path: str) -> None:
    """Write the diffusers folder (DiTPipeline + FlowMatchEulerDiscreteScheduler, id2label of the digits) atomically:
    written beside `path`, then swapped in."""
    require_diffusers()
    from diffusers import DiTPipeline, FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    id2label = {str(i): str(i) for i in range(N_CLASSES)}
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=sched, id2label={i: str(i) for i in range(N_CLASSES)})
    tmp = path + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    mi = os.path.join(tmp, "model_index.json")
    with open(mi) as f:
        index = json.load(f)
    index["id2label"] = id2label  # DiTPipeline's optional init argument (as in facebook/DiT-XL-2-256)
    atomic_write_json(mi, index)
    old = path + ".old"
    if os.path.isdir(path):
        if os.path.isdir(old):
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if os.path.isdir(old):
        shutil.rmtree(old)


def plot_flow_losses(vae_hist: List[List[float]], flow_hist: List[List[float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    for ax, hist, col, title, ylab in ((axes[0], vae_hist, 2, "VAE (AutoencoderKL)", "reconstruction MSE / pixel"),
                                       (axes[1], flow_hist, 1, "flow DiT on latents", "flow-matching loss")):
        steps = [h[0] for h in hist]
        y = [h[col] for h in hist]
        ax.plot(steps, y, lw=0.6, alpha=0.35, label="per step")
        w = max(1, len(y) // 50)
        sm = [sum(y[max(0, i - w + 1): i + 1]) / len(y[max(0, i - w + 1): i + 1]) for i in range(len(y))]
        ax.plot(steps, sm, lw=1.5, label=f"running mean ({w})")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylab)
        ax.set_title(title)
        ax.legend()
    fig.suptitle("bundled latent flow model: training losses", fontsize=10)
    fig.tight_layout()
    atomic_savefig(path, fig)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def evaluate_bundled_flow(path: Optional[str] = None, out_dir: Optional[str] = None, n: int = 1000, steps: int = 50,
                          guidances: Sequence[float] = (1.0, 1.5, 2.0, 3.0), grid_guidance: float = 2.0, seed: int = 0,
                          batch: int = 250) -> Dict:
    """Fréchet distances (digits-cnn-v1 features, indis.metrics.fid) to the 297 held-out digits of n class-
    balanced samples (n/10 per class; `steps`-step Euler with the pipeline's FlowMatchEulerDiscreteScheduler) per
    guidance scale, with two references of the same sizes: n training digits (a fixed random subset) and the VAE's
    reconstructions of the held-out digits; and the class accuracy of the samples under the digits-cnn-v1
    classifier (its head; 99.0% on held-out real digits), which shows what guidance buys; writes bundled_flow_quality.json and the sample grid (one row per
    class, guidance grid_guidance) into out_dir (default: the assets)."""
    require_diffusers()  # before diffusers' first import (it hides a broken torchvision)
    from diffusers import FlowMatchEulerDiscreteScheduler


    torch.set_num_threads(1)
    paths = bundled_flow_paths(out_dir)
    bb = load_bundled_flow(path)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(path or paths["pipeline"], subfolder="scheduler", local_files_only=True)
    train, _ = load_digits_split("train", 16)
    held, _ = load_digits_split("heldout", 16)
    if n < train.shape[0]:
        train = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
    q: Dict = {"extractor": EXTRACTOR_NAME, "n_samples": n, "n_heldout": held.shape[0], "seed": seed,
               "sampler": f"FlowMatchEulerDiscreteScheduler (shift {bb.shift}), {steps} Euler steps", "steps": steps,
               "backbone_id": bb.backbone_id, "n_train_reference": train.shape[0],
               "fd_train_vs_heldout": digits_fid(train, held),
               "fd_vae_reconstruction_vs_heldout": digits_fid(vae_reconstruction(bb.vae, held), held),
               "fd_samples_vs_heldout": {}, "class_accuracy": {}, "sampling_time_s": {}}
    classifier = load_digits_features()
    labels = torch.arange(n) % N_CLASSES
    for w in guidances:
        g = torch.Generator().manual_seed(seed)
        t0 = time.time()
        xs = torch.cat([bb.decode(sample_latents(bb.transformer, sched, labels[lo: lo + batch], steps, w, g))
                        for lo in range(0, n, batch)])
        q["sampling_time_s"][str(w)] = round(time.time() - t0, 1)
        q["fd_samples_vs_heldout"][str(w)] = digits_fid(xs, held)
        with torch.no_grad():
            q["class_accuracy"][str(w)] = float((classifier(xs).argmax(1) == labels).float().mean())
    g = torch.Generator().manual_seed(seed + 1)
    grid_labels = torch.arange(N_CLASSES).repeat_interleave(N_CLASSES)
    xs = bb.decode(sample_latents(bb.transformer, sched, grid_labels, steps, grid_guidance, g))
    save_grid(xs, paths["samples_png"], nrow=N_CLASSES,
              title=f"bundled latent flow model: {steps}-step Euler, guidance {grid_guidance}, row = class 0..9")
    q["grid"] = {"guidance": grid_guidance, "steps": steps, "seed": seed + 1}
    atomic_write_json(paths["quality"], q)
    return q


def evaluate_few_step(path: Optional[str] = None, out_dir: Optional[str] = None, nfes: Sequence[int] = (5, 10),
                      shifts: Sequence[float] = (1.0, 3.0), guidance: float = 1.0, n: int = 500, seed: int = 0) -> Dict:
    """How the schedule's shift matters at few steps: Fréchet distance to the held-out digits of n class-balanced
    samples of INDIS' Euler solver on the shift schedule t' = s t / (1 + (s - 1) t) over [t0, T] (the process's
    range; indis.backbones.flow.default_timesteps), per NFE and shift; merged into bundled_flow_quality.json
    under "few_step_euler"."""

    torch.set_num_threads(1)
    paths = bundled_flow_paths(out_dir)
    bb = load_bundled_flow(path)
    model = GuidedBackbone(bb, guidance)
    held, _ = load_digits_split("heldout", 16)
    labels = torch.arange(n) % N_CLASSES
    x_T = torch.randn(n, *bb.data_shape, generator=torch.Generator().manual_seed(seed)) * bb.process.prior_std()
    res: Dict = {"guidance": guidance, "n_samples": n, "seed": seed, "solver": "euler", "fd_vs_heldout": {}}
    for k in nfes:
        for s in shifts:
            ts = default_timesteps(k, s, bb.process.t0, bb.process.T)
            with torch.no_grad():
                z = torch.cat([sample(model, x_T[lo: lo + 250], ts, solver="euler", cond=labels[lo: lo + 250],
                                      state_dtype=torch.float32) for lo in range(0, n, 250)])
            res["fd_vs_heldout"][f"nfe{k}_shift{s:g}"] = digits_fid(bb.decode(z), held)
    q = json.load(open(paths["quality"])) if os.path.isfile(paths["quality"]) else {}
    q["few_step_euler"] = res
    atomic_write_json(paths["quality"], q)
    return res
