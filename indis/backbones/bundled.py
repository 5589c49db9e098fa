"""The bundled neural backbone: a small EDM network (our SongUNet) trained by this project on scikit-learn's
8x8 digits, upsampled to 16x16 (indis.data.digits). It ships as indis/assets/bundled_digits.safetensors +
bundled_digits.json and is the default model of the quickstart and the neural benchmark of the quality tables.

Training (`train_bundled`, CLI `indis train-backbone`): EDM's loss (Karras et al. 2022, section 5 / training/
loss.py): ln sigma ~ N(P_mean = -1.2, P_std = 1.2), weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2,
loss = lambda(sigma) |D(y + sigma n; sigma) - y|^2; Adam with linear warm-up; an exponential moving average
(EMA) of the weights with a half-life in optimizer steps (ramped up early); tqdm progress bar; an atomic
training-state checkpoint every `ckpt_every` steps (resume with resume=True picks it up, including RNG
states, so an interrupted run continues where it stopped); at the end the EMA weights are exported as
safetensors + JSON and the loss curve is written as JSON and PNG. The run is deterministic for a given seed
and thread count.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

from ..data.digits import load_digits_split
from ..io import atomic_savefig, atomic_torch_save, atomic_write_json
from ..metrics.fid import EXTRACTOR_NAME, digits_fid
from ..options import setting
from ..schedules import get_schedule
from ..solvers import sample
from .convert import load_backbone, save_backbone
from .edm import EDMBackbone
from .edm_nets import EDMPrecond

Tensor = torch.Tensor

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
BUNDLED_STEM = "bundled_digits"


def bundled_paths(assets_dir: Optional[str] = None) -> Dict[str, str]:
    d = assets_dir or ASSETS_DIR
    return {
        "weights": os.path.join(d, BUNDLED_STEM + ".safetensors"),
        "config": os.path.join(d, BUNDLED_STEM + ".json"),
        "loss_json": os.path.join(d, BUNDLED_STEM + "_loss.json"),
        "loss_png": os.path.join(d, BUNDLED_STEM + "_loss.png"),
        "samples_png": os.path.join(d, BUNDLED_STEM + "_samples.png"),
        "quality": os.path.join(d, BUNDLED_STEM + "_quality.json"),
    }


def load_bundled(compute_dtype: Optional[str] = None, assets_dir: Optional[str] = None) -> EDMBackbone:
    """The bundled digits backbone (EDM process, x0 prediction, data shape [1, 16, 16], unconditional)."""
    p = bundled_paths(assets_dir)
    if not os.path.isfile(p["weights"]):
        raise FileNotFoundError(
            f"the bundled checkpoint {p['weights']} is missing; reinstall indis or rebuild it with `indis train-backbone`"
        )
    return load_backbone(p["config"], compute_dtype=compute_dtype, weights=p["weights"])


@dataclass
class TrainConfig:
    resolution: int = setting(16, "image resolution of the digits", choices=(8, 16, 32))
    model_channels: int = setting(32, "model_channels of the SongUNet")
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 2])
    num_blocks: int = 2
    attn_resolutions: List[int] = field(default_factory=lambda: [8])
    dropout: float = 0.10
    sigma_data: float = 0.5
    steps: int = setting(1500, "optimizer steps")
    batch_size: int = setting(64, "batch size")
    lr: float = setting(2e-3, "peak learning rate")
    warmup_steps: int = 100
    ema_halflife_steps: float = 150.0
    p_mean: float = -1.2
    p_std: float = 1.2
    grad_clip: float = 1.0
    seed: int = setting(0, "initialisation and data order")
    ckpt_every: int = 250
    threads: int = setting(1, "torch CPU threads")

    def net_kwargs(self) -> Dict:
        return dict(img_resolution=self.resolution, img_channels=1, label_dim=0, sigma_data=self.sigma_data,
                    model_type="SongUNet", model_channels=self.model_channels, channel_mult=list(self.channel_mult),
                    num_blocks=self.num_blocks, attn_resolutions=list(self.attn_resolutions), dropout=self.dropout)


def edm_loss(net: EDMPrecond, y: Tensor, generator: torch.Generator, p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """EDM's weighted denoising loss, averaged over the batch and pixels."""
    b = y.shape[0]
    sigma = torch.exp(torch.randn(b, generator=generator) * p_std + p_mean)
    sd = net.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    n = torch.randn(y.shape, generator=generator) * sigma.view(-1, 1, 1, 1)
    d = net(y + n, sigma)
    return (weight.view(-1, 1, 1, 1) * (d - y) ** 2).mean()


def plot_loss(history: List[List[float]], path: str, title: str = "bundled digits backbone: EDM loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in history]
    loss = [h[1] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.35, label="per step")
    w = max(1, len(loss) // 50)
    if len(loss) >= w:
        sm = [sum(loss[max(0, i - w + 1): i + 1]) / len(loss[max(0, i - w + 1): i + 1]) for i in range(len(loss))]
        ax.plot(steps, sm, lw=1.5, label=f"running mean ({w})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("EDM loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(path, fig)
    plt.close(fig)



def warmup_lr(opt: torch.optim.Optimizer, lr: float, step: int, warmup_steps: int) -> None:
    """Linear learning-rate warm-up over the first warmup_steps steps (step counts from 0)."""
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps))


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, lr: float, step: int, warmup_steps: int,
                   grad_clip: float) -> None:
    """One optimisation step of the bundled models' trainers: backward, gradient-norm clip (grad_clip 0: off), the
    warm-up learning rate of this step (warmup_lr), Adam step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    warmup_lr(opt, lr, step, warmup_steps)
    opt.step()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, step: int, halflife_steps: float) -> None:
    """EMA of the weights after `step` optimizer steps: half-life halflife_steps, faster while step is small
    (beta = min(0.5^(1/halflife), (1 + step) / (10 + step)))."""
    beta = min(0.5 ** (1.0 / halflife_steps), (1 + step) / (10 + step))
    for pe, pn in zip(ema.parameters(), net.parameters()):
        pe.lerp_(pn.detach(), 1 - beta)

def train_bundled(out_dir: str, config: Optional[TrainConfig] = None, resume: bool = True, progress: bool = True,
                  log_every: int = 50, export_dir: Optional[str] = None) -> EDMBackbone:
    """Train the bundled digits backbone. out_dir receives train_state.pt (periodic, atomic); export_dir
    (default out_dir) receives bundled_digits.safetensors/.json (EMA weights) and bundled_digits_loss.json/.png.
    Returns the EMA backbone."""
    cfg = config or TrainConfig()
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    torch.set_num_threads(max(1, int(cfg.threads)))
    os.makedirs(out_dir, exist_ok=True)
    state_path = os.path.join(out_dir, "train_state.pt")
    data, _ = load_digits_split("train", resolution=cfg.resolution)

    torch.manual_seed(cfg.seed)
    net = EDMPrecond(**cfg.net_kwargs())
    ema = EDMPrecond(**cfg.net_kwargs())
    ema.load_state_dict(net.state_dict())
    ema.eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, history, elapsed = 0, [], 0.0

    if resume and os.path.isfile(state_path):
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        # the run length, checkpoint period and thread count may change between sessions; nothing else
        volatile = ("steps", "ckpt_every", "threads")
        if {k: v for k, v in st["config"].items() if k not in volatile} != {k: v for k, v in asdict(cfg).items() if k not in volatile}:
            raise ValueError(f"{state_path} was written with a different training config; remove it or pass resume=False")
        net.load_state_dict(st["net"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        step, history, elapsed = int(st["step"]), [list(h) for h in st["history"]], float(st["elapsed"])

    def save_state():
        atomic_torch_save(state_path, {"config": asdict(cfg), "net": net.state_dict(), "ema": ema.state_dict(),
                                       "opt": opt.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                       "step": step, "history": history, "elapsed": elapsed})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train-backbone", mininterval=5.0)
    net.train()
    t_start = time.time() - elapsed
    n = data.shape[0]
    while step < cfg.steps:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        loss = edm_loss(net, data[idx], gen, cfg.p_mean, cfg.p_std)
        optimizer_step(opt, loss, net.parameters(), cfg.lr, step, cfg.warmup_steps, cfg.grad_clip)
        step += 1
        ema_update(ema, net, step, cfg.ema_halflife_steps)
        history.append([step, loss.item()])
        elapsed = time.time() - t_start
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                recent = [h[1] for h in history[-log_every:]]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_state()
    if bar is not None:
        bar.close()

    export_dir = export_dir or out_dir
    os.makedirs(export_dir, exist_ok=True)
    paths = bundled_paths(export_dir)
    bb = EDMBackbone(ema, name=BUNDLED_STEM)
    final = [h[1] for h in history[-200:]]
    extra = {"training": {"config": asdict(cfg), "steps": step, "wall_time_s": round(elapsed, 1),
                          "final_loss_mean_last200": sum(final) / len(final), "torch": torch.__version__,
                          "dataset": "sklearn.datasets.load_digits, train split (1500 images), bilinear upsampling"}}
    tmp_dir = os.path.join(export_dir, ".export")
    save_backbone(bb, tmp_dir, source="indis train-backbone", extra=extra)
    os.replace(os.path.join(tmp_dir, "model.safetensors"), paths["weights"])
    os.replace(os.path.join(tmp_dir, "config.json"), paths["config"])
    os.rmdir(tmp_dir)
    atomic_write_json(paths["loss_json"], {"step_loss": history, "wall_time_s": elapsed})
    plot_loss(history, paths["loss_png"])
    return bb



@torch.no_grad()
def sample_backbone(backbone, n: int, steps: int = 50, solver: str = "ipndm", seed: int = 0, batch: int = 500) -> Tensor:
    """n samples with `steps` solver steps on EDM's polynomial (rho = 7) schedule over [t0, T], clipped to [-1, 1]."""
    ts = get_schedule("polynomial", backbone.process, steps)
    g = torch.Generator().manual_seed(seed)
    out = []
    for lo in range(0, n, batch):
        b = min(batch, n - lo)
        x_T = torch.randn(b, *backbone.data_shape, generator=g) * backbone.process.prior_std()
        out.append(sample(backbone, x_T, ts, solver=solver, state_dtype=torch.float32))
    return torch.cat(out).clamp(-1, 1)


def save_grid(images: Tensor, path: str, nrow: int = 10, title: Optional[str] = None) -> None:
    """Save [N, 1, H, W] images in [-1, 1] as a grid PNG (white digits on black, as in the dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images[: nrow * nrow].detach().float().clamp(-1, 1)
    n, _, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.full((rows * (h + 1) + 1, nrow * (w + 1) + 1), -1.0)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = x[i, 0]
    fig, ax = plt.subplots(figsize=(6, 6 * rows / nrow + (0.4 if title else 0)), dpi=100)
    ax.imshow(grid.numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_savefig(path, fig)
    plt.close(fig)


def evaluate_bundled(backbone: EDMBackbone, out_dir: str, n: int = 1000, seed: int = 0,
                     step_counts=(50, 10)) -> Dict:
    """Sample grid (50-step iPNDM) and Fréchet distances (digits-cnn-v1 features, indis.metrics.fid) of n samples
    against the 297 held-out digits, with the distance of n training digits (a fixed random subset) to the
    held-out digits as the reference (same set sizes); writes bundled_digits_samples.png and
    bundled_digits_quality.json into out_dir."""
    torch.set_num_threads(1)
    backbone = backbone.eval()
    os.makedirs(out_dir, exist_ok=True)
    paths = bundled_paths(out_dir)
    train, _ = load_digits_split("train", 16)
    held, _ = load_digits_split("heldout", 16)
    if n < train.shape[0]:
        train = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
    q: Dict = {"extractor": EXTRACTOR_NAME, "n_samples": n, "n_heldout": held.shape[0], "seed": seed,
               "schedule": "polynomial rho=7, t0=0.002, T=80", "solver": "ipndm",
               "backbone_id": backbone.backbone_id,
               "n_train_reference": train.shape[0], "fd_train_vs_heldout": digits_fid(train, held), "fd_samples_vs_heldout": {}, "sampling_time_s": {}}
    for k in step_counts:
        t = time.time()
        xs = sample_backbone(backbone, n, steps=k, seed=seed)
        q["sampling_time_s"][str(k)] = round(time.time() - t, 1)
        q["fd_samples_vs_heldout"][str(k)] = digits_fid(xs, held)
        if k == step_counts[0]:
            save_grid(xs, paths["samples_png"], title=f"bundled digits backbone: {k}-step iPNDM samples (seed {seed})")
    atomic_write_json(paths["quality"], q)
    return q
