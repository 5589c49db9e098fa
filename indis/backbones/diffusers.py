"""diffusers denoisers as INDIS backbones.

`DiffusersAdapter` wraps a diffusers model (UNet2DModel-like `model(sample, timestep).sample`, or an
SD3Transformer2DModel-like transformer `model(hidden_states=, timestep=, encoder_hidden_states=,
pooled_projections=).sample`) so that the INDIS solvers, teacher, training and export can call it as
`backbone(x, t, cond)` with INDIS's process time t.

Two things are taken from the model's scheduler config and never re-derived:

* The timestep the network is called at. Flow-matching models (FlowMatchEulerDiscreteScheduler: SD3, FLUX) take
  t * num_train_timesteps. DDPM-style models were trained on a DISCRETE schedule alphas_cumprod[0..K-1]; diffusers'
  schedulers call them, for a noise level sigma = sqrt((1 - a) / a), at the fractional timestep found by linear
  interpolation of log sigma over the K training sigmas (EulerDiscreteScheduler._sigma_to_t). `DiscreteSchedule`
  does the same, differentiably and with ONNX-exportable ops, so the adapter calls the network where diffusers
  would for the same sigma.
* The prediction type, under diffusers' names: "epsilon" (-> INDIS "eps"), "sample" (-> "x0"), "v_prediction"
  (VP only: v = alpha eps - sigma x0, Salimans & Ho 2022, "Progressive Distillation", Appendix D; the adapter returns
  eps = alpha v + sigma x, because INDIS's "velocity" is the ODE velocity alpha' x0 + sigma' eps, a different
  quantity), "flow_prediction" (-> "velocity", v = eps - x0 on the flow-matching path). INDIS's own names "eps",
  "x0" and "velocity" are accepted as they are.

INDIS's solvers work in the VE-equivalent variables (x / alpha, sigma / alpha), so for a variance-preserving model
the continuous process only parameterises time: `DiscreteSchedule.process()` is a VP-linear process whose noise
levels span exactly the discrete schedule's [sigma_min, sigma_max] (T = 0.999 at sigma_max, its initial slope
K * beta_0), and the network is always called at the discrete timestep of the noise level.

diffusers is imported lazily: `pip install indis[diffusers]`. Nothing is ever downloaded: models come from a local
directory or are built by the caller.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..processes import VPLinearProcess, _bcast, get_process
from ..schedules import get_schedule, rds_mu, shifted_uniform
from .base import Backbone, CondSpec

Tensor = torch.Tensor

DIFFUSERS_HINT = "pip install indis[diffusers]"

#: diffusers' prediction type names -> the INDIS prediction type of what the adapter returns
DIFFUSERS_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "eps", "flow_prediction": "velocity"}
#: the INDIS names, accepted as they are
INDIS_PREDICTION_TYPES = ("eps", "x0", "velocity")
VP_PROCESSES = ("vp_linear", "vp_cosine")
#: the scheduler config keys that define a discrete DDPM noise schedule (the rest of a config is ignored)
DISCRETE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                          "rescale_betas_zero_snr")


def hide_broken_torchvision() -> bool:
    """A torchvision build that does not match the installed torch (on CPU-only torch: "operator torchvision::nms
    does not exist") raises on import and breaks diffusers' model imports, which import it when it looks installed.
    The README's install does not bring torchvision; for environments that have such a build anyway: if importing
    it fails that way, register it as absent (sys.modules entry None) so that diffusers and anything else treat it
    as not installed. Returns True if it had to be hidden."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is None
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    except Exception:  # RuntimeError from the operator registration of a mismatched build
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None
        return True
    return False


def require_diffusers():
    """Import diffusers (hiding a broken torchvision first) or raise an ImportError that says how to install it."""
    hide_broken_torchvision()
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"this feature needs the optional dependency diffusers: {DIFFUSERS_HINT}") from e
    return diffusers


def pack_text_cond(encoder_hidden_states: Tensor, pooled: Optional[Tensor] = None) -> Tensor:
    """Pack text-encoder outputs [B, L, Dj] (and pooled [B, Dp]) into the [B, L*Dj + Dp] condition that the
    transformer adapter takes (CondSpec 'text')."""
    flat = encoder_hidden_states.reshape(encoder_hidden_states.shape[0], -1)
    return flat if pooled is None else torch.cat([flat, pooled], dim=1)


def scheduler_config(scheduler) -> Dict:
    """The config dict of a diffusers scheduler object, a config dict, or a scheduler_config.json path."""
    if scheduler is None:
        return {}
    if isinstance(scheduler, (str, os.PathLike)):
        with open(scheduler) as f:
            return json.load(f)
    cfg = getattr(scheduler, "config", scheduler)
    try:
        return dict(cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scheduler must be a diffusers scheduler, its config dict or a scheduler_config.json path, "
                         f"got {type(scheduler).__name__}") from e


def is_flow_scheduler(cfg: Dict) -> bool:
    """True for flow-matching schedulers (FlowMatchEulerDiscreteScheduler and kin), False for DDPM-style ones."""
    name = str(cfg.get("_class_name", ""))
    if "FlowMatch" in name:
        return True
    if "beta_schedule" in cfg or "trained_betas" in cfg or "beta_start" in cfg:
        return False
    return "shift" in cfg or "use_dynamic_shifting" in cfg


def flow_shift(cfg: Dict, image_seq_len: int) -> float:
    """The shift s of a flow-matching scheduler config, sigma' = s sigma / (1 + (s - 1) sigma): its `shift`, or with
    use_dynamic_shifting the resolution-dependent shift the pipelines use (FLUX: mu linear in the number of image
    tokens between base_image_seq_len and max_image_seq_len; s = exp(mu), or mu itself for time_shift_type
    "linear")."""
    if not cfg.get("use_dynamic_shifting", False):
        return float(cfg.get("shift", 1.0))
    base_len, max_len = int(cfg.get("base_image_seq_len", 256)), int(cfg.get("max_image_seq_len", 4096))
    base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    base_shift = 0.5 if base_shift is None else float(base_shift)
    max_shift = 1.15 if max_shift is None else float(max_shift)
    mu = rds_mu(image_seq_len, base_len, max_len, base_shift, max_shift)
    return mu if cfg.get("time_shift_type", "exponential") == "linear" else math.exp(mu)


class DiscreteSchedule:
    """A diffusers DDPM-style discrete noise schedule and its sigma -> timestep map.

    alphas_cumprod come from diffusers' own scheduler class built from the config (the class the config names, else
    EulerDiscreteScheduler), so every beta schedule diffusers knows ("linear", "scaled_linear", "squaredcos_cap_v2",
    trained_betas, rescale_betas_zero_snr) is read, not re-derived. A zero terminal alpha (zero-SNR rescaling) is
    clamped to 2**-24 as EulerDiscreteScheduler does.
    """

    def __init__(self, config: Optional[Dict] = None):
        cfg = {k: v for k, v in (config or {}).items() if k in DISCRETE_SCHEDULE_KEYS or k == "_class_name"}
        diffusers = require_diffusers()
        cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
        if cls is None or not hasattr(cls, "from_config"):
            cls = diffusers.EulerDiscreteScheduler
        sched = cls.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
        ac = getattr(sched, "alphas_cumprod", None)
        if ac is None:
            raise ValueError(f"{cls.__name__} has no alphas_cumprod: it is not a DDPM-style discrete scheduler")
        ac = torch.as_tensor(ac, dtype=torch.float32)
        ac = torch.where(ac > 0, ac, torch.full_like(ac, 2.0**-24))
        # as diffusers: sigmas in float32 from float32 alphas_cumprod, the interpolation on their logarithm
        self.log_sigmas = (((1 - ac) / ac) ** 0.5).double().log()
        if not (self.log_sigmas.diff() > 0).all():
            raise ValueError("the discrete schedule's sigmas must increase strictly with the timestep")
        self.config = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in sched.config.items()
                       if k in DISCRETE_SCHEDULE_KEYS}
        self._cache: Dict[Tuple, Tensor] = {}

    @property
    def num_train_timesteps(self) -> int:
        return self.log_sigmas.shape[0]

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        return float(self.log_sigmas[-1].exp())

    def _log_sigmas(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.log_sigmas.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def timestep(self, log_sigma: Tensor) -> Tensor:
        """The fractional training timestep of the noise levels exp(log_sigma), as EulerDiscreteScheduler._sigma_to_t:
        linear interpolation of log sigma over the training sigmas, clamped to [0, K - 1]. Differentiable in
        log_sigma; comparisons, sums and gathers only (ONNX-exportable)."""
        ls = self._log_sigmas(log_sigma)
        k = ls.shape[0]
        below = (log_sigma.unsqueeze(-1) >= ls).sum(-1)  # how many training sigmas lie at or below sigma
        low = (below - 1).clamp(0, k - 2)
        lo, hi = ls[low], ls[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return low.to(log_sigma.dtype) + w

    #: the process time of sigma_max: below 1, so that float32 times stay inside vp_linear's valid range
    T = 0.999

    def process(self):
        """A VP-linear process whose VE-equivalent noise level sigma/alpha spans this schedule: sigma_max at T
        (0.999), sigma_min at t0, initial slope beta_0 = K * betas[0] (only the parameterisation of time; the
        network is called at the discrete timestep of each noise level)."""
        k, T = self.num_train_timesteps, self.T
        a0 = 1.0 / (1.0 + self.sigma_min**2)  # alphas_cumprod[0] = 1 - betas[0]
        beta_0 = k * (1.0 - a0)
        # -log alpha(T)^2 = beta_0 T + (beta_1 - beta_0) T^2 / 2 = log(1 + sigma_max^2)
        beta_1 = beta_0 + 2.0 * (math.log1p(self.sigma_max**2) - beta_0 * T) / T**2
        if not beta_1 > beta_0 > 0:
            raise ValueError(f"cannot fit a VP-linear process to this discrete schedule (beta_0 {beta_0}, beta_1 {beta_1})")
        p = VPLinearProcess(beta_0=beta_0, beta_1=beta_1, T=T)
        t0 = float(p.t_from_log_snr(torch.tensor(-math.log(self.sigma_min), dtype=torch.float64)))
        return VPLinearProcess(t0=t0, T=T, beta_0=beta_0, beta_1=beta_1)


def resolve_prediction_type(name: str, process) -> str:
    """The INDIS prediction type of the adapter's output for a model of prediction type `name` (diffusers' or
    INDIS's names) under `process`."""
    if name in INDIS_PREDICTION_TYPES:
        return name
    if name not in DIFFUSERS_PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {name!r}; expected one of diffusers' "
                         f"{sorted(DIFFUSERS_PREDICTION_TYPES)} or INDIS's {list(INDIS_PREDICTION_TYPES)}")
    if name == "v_prediction" and process.name not in VP_PROCESSES:
        raise ValueError(f"prediction type 'v_prediction' (v = alpha eps - sigma x0) needs a variance-preserving "
                         f"process ({', '.join(VP_PROCESSES)}), got {process.name!r}; a flow-matching model predicts "
                         "'flow_prediction'")
    if name == "flow_prediction" and process.name != "flow":
        raise ValueError(f"prediction type 'flow_prediction' belongs to the flow-matching process, got {process.name!r}")
    return DIFFUSERS_PREDICTION_TYPES[name]


def model_output_to_indis(out: Tensor, x: Tensor, t: Tensor, process, model_prediction_type: str) -> Tensor:
    """A diffusers model's output at (x, t) as the INDIS prediction `resolve_prediction_type` names: unchanged, except
    diffusers' VP v_prediction, v = alpha eps - sigma x0 with x = alpha x0 + sigma eps and alpha^2 + sigma^2 = 1,
    which becomes eps = alpha v + sigma x. t: process times [B] (or a scalar)."""
    if model_prediction_type != "v_prediction":
        return out
    tt = torch.as_tensor(t, device=x.device).to(x.dtype)
    return _bcast(process.alpha(tt), x) * out + _bcast(process.sigma(tt), x) * x


def rotary_emb_traceable(x: Tensor, freqs_cis, use_real: bool = True, use_real_unbind_dim: int = -1,
                         sequence_dim: int = 2) -> Tensor:
    """diffusers' apply_rotary_emb (use_real, interleaved pairs: FLUX) without reshapes of x: the pair rotation
    (x0, x1) -> (-x1, x0) is x @ R with R a signed permutation matrix, so the traced ONNX graph keeps a dynamic
    batch. Equal to diffusers' function (the products with R are exact); other modes go to diffusers'."""
    from diffusers.models.embeddings import apply_rotary_emb

    if not use_real or use_real_unbind_dim != -1:
        return apply_rotary_emb(x, freqs_cis, use_real, use_real_unbind_dim, sequence_dim)
    cos, sin = freqs_cis  # [S, D]
    if sequence_dim == 2:
        cos, sin = cos[None, None], sin[None, None]
    elif sequence_dim == 1:
        cos, sin = cos[None, :, None], sin[None, :, None]
    else:
        raise ValueError(f"`sequence_dim={sequence_dim}` but should be 1 or 2.")
    d = x.shape[-1]
    rot = torch.zeros(d, d, dtype=torch.float32, device=x.device)
    even = torch.arange(0, d, 2, device=x.device)
    rot[even + 1, even] = -1.0  # out[2i] = -x[2i+1]
    rot[even, even + 1] = 1.0  # out[2i+1] = x[2i]
    xf = x.float()
    return (xf * cos.to(x.device) + (xf @ rot) * sin.to(x.device)).to(x.dtype)


def _read_json(path: str) -> Optional[Dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _component_class(entry) -> Optional[str]:
    """The class name of a model_index.json entry ["library", "ClassName"] (None for an absent component)."""
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
        return str(entry[1])
    return None


def _load_component(diffusers, path: str, subfolder: Optional[str], torch_dtype=None) -> torch.nn.Module:
    """A diffusers model from a local folder (or its subfolder), its class named by the folder's config.json."""
    folder = os.path.join(path, subfolder) if subfolder else path
    cfg = _read_json(os.path.join(folder, "config.json"))
    if cfg is None:
        raise FileNotFoundError(f"{folder} has no config.json: expected a diffusers pipeline folder (model_index.json) "
                                "or a model folder written by save_pretrained")
    name = cfg.get("_class_name")
    model_cls = getattr(diffusers, str(name), None)
    if model_cls is None or not hasattr(model_cls, "from_pretrained"):
        raise ValueError(f"{folder}/config.json names {name!r}, which is not a diffusers model class of the installed "
                         f"diffusers {diffusers.__version__}")
    kw = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    # low_cpu_mem_usage=False: the same weights, without asking for the optional `accelerate` package
    return model_cls.from_pretrained(path, subfolder=subfolder, local_files_only=True, low_cpu_mem_usage=False, **kw)


def _family_defaults(model: torch.nn.Module, vae=None, kind: Optional[str] = None) -> Dict:
    """data_shape, kind and condition layout of a diffusers denoiser, read from its config."""
    cfg = getattr(model, "config", None)
    get = (lambda k, d=None: getattr(cfg, k, d) if cfg is not None else d)
    kind = _model_kind(model) if kind is None else kind
    out: Dict = {"kind": kind}
    size = get("sample_size")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        out["data_shape"] = (int(get("in_channels")), int(h), int(w))
    if kind == "unet" and get("num_class_embeds") and get("class_embed_type") is None:
        out["n_classes"] = int(get("num_class_embeds"))  # an embedding table of class labels
    if kind == "dit":  # DiT's label table has num_embeds_ada_norm classes + its null class
        out["n_classes"] = int(get("num_embeds_ada_norm") or 0)
    if kind == "transformer":  # SD3: CLIP-L/G (77 tokens) + T5 (256 tokens) joint sequence, pooled CLIP-L+G
        out.update(text_seq_len=77 + 256, text_dim=int(get("joint_attention_dim")),
                   pooled_dim=int(get("pooled_projection_dim")))
    elif kind == "flux":  # T5 (512 tokens, FLUX.1-dev's max_sequence_length), pooled CLIP-L; latents 2x2-packed
        c = int(get("in_channels")) // 4
        out.update(data_shape=(c, 128, 128), text_seq_len=512, text_dim=int(get("joint_attention_dim")),
                   pooled_dim=int(get("pooled_projection_dim")))
    elif kind == "video":  # LTX-Video: T5 (128 tokens, LTXPipeline's max_sequence_length), no pooled vector;
        # the latent video [C, F, H, W] has no default size (the pipeline takes num_frames / height / width per call)
        out.pop("data_shape", None)
        out.update(text_seq_len=128, text_dim=int(get("caption_channels")))
        if vae is not None and hasattr(vae, "temporal_compression_ratio"):
            out["rope_interpolation_scale"] = (float(vae.temporal_compression_ratio) / LTX_FRAME_RATE,
                                               float(vae.spatial_compression_ratio), float(vae.spatial_compression_ratio))
    elif kind == "unet_text":  # CLIP (77 tokens); SDXL adds the pooled CLIP-G vector and the size/crop time ids
        out.update(text_seq_len=77, text_dim=int(get("cross_attention_dim")))
        if _is_sdxl(model):
            out["pooled_dim"] = int(get("projection_class_embeddings_input_dim")) - 6 * int(get("addition_time_embed_dim"))
            if vae is not None and "data_shape" in out:
                f = _vae_scale_factor(vae)
                h, w = out["data_shape"][1] * f, out["data_shape"][2] * f
                out["time_ids"] = (h, w, 0, 0, h, w)
    return out


def default_schedule(process, n: int, shift: float = 1.0) -> Tensor:
    """A diffusers model's default n-step schedule: uniform in the process's time, flow models shifted by `shift`."""
    if process.name != "flow":
        return get_schedule("uniform", process, n)
    return shifted_uniform(n, process.t0, process.T, shift=shift)


def model_timesteps(process, discrete, timestep_scale: Optional[float], t: Tensor) -> Tensor:
    """The timestep a diffusers network is called at for process time t [B] (in t's dtype, at least float32): the
    discrete schedule's timestep of t's log-SNR (timestep_scale unused), or t * timestep_scale for continuous-time
    models."""
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    if discrete is not None:
        return discrete.timestep(-process.log_snr(t))
    return t * timestep_scale


def video_patch(model_config) -> Tuple[int, int]:
    """(patch_size_t, patch_size) of an LTX-Video transformer config (1 where absent): the latent is packed into
    tokens of pt x ps x ps positions."""
    return int(getattr(model_config, "patch_size_t", 1) or 1), int(getattr(model_config, "patch_size", 1) or 1)


def _image_tokens(model: torch.nn.Module, kind: str, data_shape: Sequence[int]) -> int:
    """The number of image tokens of a latent [C, H, W] (what dynamic shifting is keyed on): FLUX packs 2x2
    patches, SD3-style transformers patchify by their patch_size, a UNet has H * W positions."""
    h, w = int(data_shape[-2]), int(data_shape[-1])
    cfg = getattr(model, "config", None)
    p = 2 if kind == "flux" else int(getattr(cfg, "patch_size", 1) or 1)
    frames = int(data_shape[1]) // video_patch(cfg)[0] if kind == "video" else 1
    return frames * (h // p) * (w // p)


#: how the adapter calls each family of denoisers (DiffusersAdapter.predict)
KINDS = {
    "unet": "UNet2DModel: model(x, t, class_labels=)",
    "dit": "DiTTransformer2DModel: model(x, timestep=, class_labels=), the all-zero condition = its null class "
           "(num_embeds_ada_norm); a learned-sigma output's variance half is dropped",
    "unet_text": "UNet2DConditionModel (SD 1.x/2.x; SDXL with added text_embeds/time_ids): model(x, t, encoder_hidden_states=)",
    "transformer": "SD3Transformer2DModel: model(hidden_states=, timestep=, encoder_hidden_states=, pooled_projections=)",
    "flux": "FluxTransformer2DModel: 2x2-packed latents, img_ids/txt_ids, guidance embedding, timestep = sigma",
    "video": "LTXVideoTransformer3DModel: [C, F, H, W] latents packed to tokens as LTXPipeline, rope interpolation "
             "scale, encoder_attention_mask, timestep = 1000 sigma",
}
TEXT_KINDS = ("unet_text", "transformer", "flux", "video")
#: LTXPipeline's default frame rate (its rope_interpolation_scale is (vae temporal ratio / frame_rate, spatial, spatial))
LTX_FRAME_RATE = 25.0
#: LTX-Video's VAE: 8x temporal, 32x spatial compression (the rope scale without a VAE at hand)
LTX_ROPE_SCALE = (8.0 / LTX_FRAME_RATE, 32.0, 32.0)


def _model_kind(model: torch.nn.Module) -> str:
    cname = type(model).__name__.lower()
    if "flux" in cname:
        return "flux"
    if "ltxvideo" in cname:
        return "video"
    if "dittransformer" in cname:
        return "dit"
    if "transformer" in cname:
        return "transformer"
    if "unet" in cname:
        return "unet_text" if "condition" in cname else "unet"
    raise ValueError(f"cannot tell which kind of denoiser {type(model).__name__} is; pass kind= (one of {sorted(KINDS)})")


def dit_class_labels(cond: Optional[Tensor], null_class: int, batch: int, device) -> Tensor:
    """A DiT's class indices from an INDIS class condition: the argmax of a one-hot row, the null class (index
    num_embeds_ada_norm of its label table, classifier-free guidance's unconditional input) for an all-zero row or
    no condition."""
    if cond is None:
        return torch.full((batch,), int(null_class), dtype=torch.long, device=device)
    arg = cond.argmax(1)
    return torch.where(cond.abs().sum(1) > 0.5, arg, torch.full_like(arg, int(null_class)))


def _is_sdxl(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "addition_embed_type", None) == "text_time"


def _vae_scale_factor(vae) -> int:
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 8


class DiffusersAdapter(Backbone):
    """Backbone over a diffusers denoiser.

    model: a diffusers denoiser; kind (how it is called, see KINDS: "unet", "unet_text", "transformer", "flux",
      "video") is
      read from the class name unless given.
    data_shape: [C, H, W] of one sample (latents for latent models); [C, F, H, W] for a video transformer.
    scheduler: the model's diffusers scheduler (object, config dict or scheduler_config.json path). A DDPM-style
      one (betas) makes the network be called at the discrete timesteps diffusers uses (DiscreteSchedule) and gives
      the default process (DiscreteSchedule.process()) and prediction type (its `prediction_type`); a flow-matching
      one gives process "flow", prediction "flow_prediction", timestep t * num_train_timesteps and its `shift`.
    process: default from the scheduler, else "flow". With a VP process and neither scheduler nor timestep_scale,
      the network is called on diffusers' default DDPM schedule (1000 linear betas 1e-4 .. 0.02).
    prediction_type: diffusers' names ("epsilon", "v_prediction", "sample", "flow_prediction") or INDIS's ("eps",
      "x0", "velocity"); default from the scheduler, else "velocity" for flow and "epsilon" otherwise.
    timestep_scale: call the network at t * timestep_scale instead (a continuous-time model; 1000 for SD3-style flow
      models, the default of flow; 1 for FLUX, whose transformer multiplies by 1000 itself).
    text_seq_len / text_dim / pooled_dim: the text condition layout of "unet_text", "transformer", "flux", "video"; the
      condition is pack_text_cond(encoder_hidden_states [B, L, text_dim], pooled [B, pooled_dim]) (pooled: SD3,
      FLUX, SDXL's text_embeds; none for SD 1.x/2.x).
    time_ids: SDXL's added (original H, W, crop top, left, target H, W) in pixels (default: 8 x the latent size).
    guidance: FLUX's embedded guidance scale (models with guidance_embeds; FLUX.1-dev's default 3.5).
    rope_interpolation_scale: LTX-Video's (temporal, spatial, spatial) rope scale, LTXPipeline's (VAE temporal ratio /
      frame rate, VAE spatial ratio, VAE spatial ratio); default (8 / 25, 32, 32), from the VAE in from_pretrained.
    n_classes: class conditioning of a UNet2DModel (passed as class_labels).
    shift: the flow shift of the model's default schedule.
    """

    KINDS = tuple(KINDS)

    def __init__(self, model: torch.nn.Module, data_shape: Sequence[int], process=None,
                 prediction_type: Optional[str] = None, kind: Optional[str] = None,
                 timestep_scale: Optional[float] = None, text_seq_len: int = 0, text_dim: int = 0, pooled_dim: int = 0,
                 n_classes: int = 0, shift: Optional[float] = None, model_name: Optional[str] = None, scheduler=None,
                 time_ids: Optional[Sequence[float]] = None, guidance: Optional[float] = None,
                 rope_interpolation_scale: Optional[Sequence[float]] = None):
        require_diffusers()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch module, got {type(model).__name__}")
        kind = _model_kind(model) if kind is None else kind
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        data_shape = tuple(int(d) for d in data_shape)
        sdxl = kind == "unet_text" and _is_sdxl(model)
        if kind in TEXT_KINDS:
            if text_seq_len < 1 or text_dim < 1:
                raise ValueError(f"a {type(model).__name__} adapter needs text_seq_len >= 1 and text_dim >= 1 (its text "
                                 "condition layout: encoder_hidden_states [B, text_seq_len, text_dim])")
            if kind == "video" and pooled_dim:
                raise ValueError("LTX-Video's transformer takes no pooled text embedding (pooled_dim must be 0)")
            if (kind in ("transformer", "flux") or sdxl) and pooled_dim < 1:
                raise ValueError(f"{type(model).__name__} takes a pooled text embedding: pass pooled_dim >= 1")
            if kind == "unet_text" and not sdxl and pooled_dim:
                raise ValueError("a UNet2DConditionModel without SDXL's added conditions takes no pooled embedding "
                                 "(pooled_dim must be 0)")
            cond = CondSpec("text", text_seq_len * text_dim + pooled_dim)
        else:
            if text_seq_len or text_dim or pooled_dim:
                raise ValueError(f"{type(model).__name__} takes no text condition (text conditioning needs a "
                                 "UNet2DConditionModel or an SD3 / FLUX transformer); it takes class labels (n_classes) "
                                 "or nothing")
            if kind == "dit" and n_classes < 1:
                raise ValueError(f"a {type(model).__name__} adapter needs its classes (n_classes = the config's "
                                 "num_embeds_ada_norm >= 1)")
            cond = CondSpec("class", n_classes) if n_classes else CondSpec()
        if kind == "video":
            pt, ps = video_patch(getattr(model, "config", None))
            if len(data_shape) != 4 or data_shape[1] % pt or data_shape[2] % ps or data_shape[3] % ps:
                raise ValueError(f"LTX-Video latents are [C, F, H, W] with F divisible by patch_size_t={pt} and H, W by "
                                 f"patch_size={ps}, got {data_shape}")
            rope_interpolation_scale = tuple(float(v) for v in (rope_interpolation_scale or LTX_ROPE_SCALE))
            if len(rope_interpolation_scale) != 3:
                raise ValueError(f"rope_interpolation_scale is 3 numbers (temporal, spatial, spatial), got "
                                 f"{rope_interpolation_scale}")
        elif rope_interpolation_scale is not None:
            raise ValueError("rope_interpolation_scale is LTX-Video's; this model has none")
        elif len(data_shape) != 3:
            raise ValueError(f"{type(model).__name__} latents are [C, H, W], got {data_shape}")
        if kind == "flux" and (len(data_shape) != 3 or data_shape[1] % 2 or data_shape[2] % 2):
            raise ValueError(f"FLUX latents are [C, H, W] with even H and W (2x2 packing), got {data_shape}")
        if sdxl:
            time_ids = tuple(float(v) for v in (time_ids if time_ids is not None else
                                                (8 * data_shape[1], 8 * data_shape[2], 0, 0, 8 * data_shape[1], 8 * data_shape[2])))
            if len(time_ids) != 6:
                raise ValueError(f"SDXL time_ids are 6 numbers (original H, W, crop top, left, target H, W), got {time_ids}")
        elif time_ids is not None:
            raise ValueError("time_ids are SDXL's added conditions; this model has none")
        guides = kind == "flux" and bool(getattr(getattr(model, "config", None), "guidance_embeds", False))
        if guidance is not None and not guides:
            raise ValueError(f"{type(model).__name__} has no guidance embedding (guidance_embeds); use classifier-free "
                             "guidance instead")

        scfg = scheduler_config(scheduler)
        discrete: Optional[DiscreteSchedule] = None
        if scfg and is_flow_scheduler(scfg):
            process = "flow" if process is None else process
            prediction_type = prediction_type or "flow_prediction"
            if timestep_scale is None:  # FLUX's transformer takes sigma and multiplies by 1000 itself
                timestep_scale = 1.0 if kind == "flux" else float(scfg.get("num_train_timesteps", 1000))
            if shift is None:
                shift = flow_shift(scfg, _image_tokens(model, kind, data_shape))
        elif scfg:
            if timestep_scale is not None:
                raise ValueError("timestep_scale cannot be combined with a DDPM-style scheduler: the network is "
                                 "called at the scheduler's discrete timesteps")
            if scfg.get("timestep_type", "discrete") != "discrete":
                raise ValueError(f"scheduler timestep_type {scfg.get('timestep_type')!r} (EDM-style c_noise timesteps) is "
                                 "not supported; only discrete DDPM timesteps and flow matching are")
            discrete = DiscreteSchedule(scfg)
            process = discrete.process() if process is None else process
            prediction_type = prediction_type or scfg.get("prediction_type", "epsilon")
        process = get_process("flow" if process is None else process)
        if not scfg and process.name in VP_PROCESSES and timestep_scale is None:
            discrete = DiscreteSchedule()  # diffusers' default DDPM schedule
        if discrete is None and timestep_scale is None:
            timestep_scale = 1.0 if kind == "flux" else 1000.0
        if discrete is not None and process.name not in VP_PROCESSES:
            raise ValueError(f"a DDPM-style discrete schedule is variance preserving; process {process.name!r} does "
                             f"not fit it (use one of {', '.join(VP_PROCESSES)}, or leave process unset)")
        if prediction_type is None:
            prediction_type = "flow_prediction" if process.name == "flow" else "epsilon"
        internal = resolve_prediction_type(prediction_type, process)
        super().__init__(process, internal, data_shape, cond)
        self.model = model
        self.kind = kind
        self.model_prediction_type = prediction_type
        self.discrete = discrete
        self.timestep_scale = None if discrete is not None else float(timestep_scale)
        self.text_seq_len, self.text_dim, self.pooled_dim = int(text_seq_len), int(text_dim), int(pooled_dim)
        self.n_classes = int(n_classes)
        self.shift = 1.0 if shift is None else float(shift)
        self.model_name = model_name
        self.time_ids = time_ids if sdxl else None
        self.guidance = (3.5 if guidance is None else float(guidance)) if guides else None
        self.rope_interpolation_scale = rope_interpolation_scale if kind == "video" else None

    @classmethod
    def from_pretrained(cls, source, subfolder: Optional[str] = None, scheduler=None, load_vae: bool = True,
                        torch_dtype: Optional[torch.dtype] = None, **kwargs) -> "DiffusersAdapter":
        """The one way to wrap a diffusers model, from local files only (never a download).

        source: a diffusers pipeline object (its `transformer` or `unet`, `scheduler` and `vae`), a diffusers model
          object, or a LOCAL folder: a whole pipeline folder (model_index.json: the denoiser from its `transformer`
          or `unet` subfolder, the scheduler config from `scheduler/`, the VAE from `vae/`) or a `save_pretrained`
          model folder (config.json; a scheduler_config.json beside it, or in ../scheduler with `subfolder`, is used).
        subfolder: the denoiser's subfolder inside a pipeline folder (default: found from model_index.json).
        scheduler: overrides the scheduler found (object, config dict or scheduler_config.json path). Without
          one, a UNet gets diffusers' default DDPM schedule and a transformer the flow-matching process.
        load_vae: keep the pipeline's VAE for `decode` (it is not part of the backbone's weights or id).
        kwargs: any DiffusersAdapter argument; data_shape and the condition layout default to the model config's.
        """
        diffusers = require_diffusers()
        vae = None
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"{path} is not a local folder: indis loads diffusers models from local files "
                                        "only and never downloads (save_pretrained the model or pipeline into a folder "
                                        "and pass that folder)")
            index = _read_json(os.path.join(path, "model_index.json"))
            if index is not None and subfolder is None:
                subfolder = next((n for n in ("transformer", "unet") if _component_class(index.get(n))), None)
                if subfolder is None:
                    raise ValueError(f"{path}/model_index.json lists no denoiser (a `transformer` or `unet` component); "
                                     f"its components: {sorted(k for k in index if not k.startswith('_'))}")
            model = _load_component(diffusers, path, subfolder, torch_dtype)
            if scheduler is None:  # the pipeline's scheduler/, else one beside the model's config (or in ../scheduler)
                pipeline_sched = os.path.join(path, "scheduler", "scheduler_config.json")
                cands = [pipeline_sched] if index is not None else \
                    [os.path.join(path, subfolder or "", "scheduler_config.json")] + ([pipeline_sched] if subfolder else [])
                scheduler = next((c for c in cands if os.path.isfile(c)), None)
            if load_vae and index is not None and _component_class(index.get("vae")):
                vae = _load_component(diffusers, path, "vae", torch_dtype)
        elif isinstance(source, torch.nn.Module):
            model = source
        else:
            model = getattr(source, "transformer", None)
            model = getattr(source, "unet", None) if model is None else model
            if not isinstance(model, torch.nn.Module):
                raise ValueError(f"{type(source).__name__} has no `transformer` or `unet` denoiser; pass a diffusers "
                                 "pipeline, model, or a local pipeline / model folder")
            scheduler = getattr(source, "scheduler", None) if scheduler is None else scheduler
            vae = getattr(source, "vae", None) if load_vae else None
        args = dict(_family_defaults(model, vae, kwargs.get("kind")))
        args.update(kwargs)
        if args.get("data_shape") is None:
            raise ValueError(f"cannot tell the latent shape of {type(model).__name__} from its config; pass "
                             f"data_shape={'(C, F, H, W)' if args['kind'] == 'video' else '(C, H, W)'}")
        if scheduler is None and args.get("process") is None and args.get("timestep_scale") is None \
                and args["kind"] in ("unet", "unet_text"):
            scheduler = {"_class_name": "DDPMScheduler"}  # diffusers' default DDPM schedule
        args.setdefault("model_name", getattr(getattr(model, "config", None), "_name_or_path", None)
                        or type(model).__name__)
        bb = cls(model, scheduler=scheduler, **args)
        bb.vae = vae
        return bb

    @property
    def vae(self):
        """The pipeline's VAE (or None): kept for decoding latents, not part of the backbone's weights or id."""
        return self.__dict__.get("_vae")

    def __setattr__(self, name, value):
        if name == "vae":  # never a submodule: it takes no part in state_dict, backbone_id, .to() or export
            self.__dict__["_vae"] = value
            return
        super().__setattr__(name, value)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images from latents [B, *data_shape] as the diffusers pipelines decode them: vae.decode(latents /
        scaling_factor + shift_factor); values about [-1, 1]."""
        if self.vae is None:
            raise ValueError("this adapter has no VAE: load it with DiffusersAdapter.from_pretrained from a pipeline "
                             "folder or object (load_vae=True), or set .vae")
        cfg = self.vae.config
        z = latents / float(getattr(cfg, "scaling_factor", 1.0) or 1.0) + float(getattr(cfg, "shift_factor", 0.0) or 0.0)
        p = next(self.vae.parameters())
        return self.vae.decode(z.to(device=p.device, dtype=p.dtype), return_dict=False)[0].to(latents.dtype)

    def config(self) -> Dict:
        cfg = super().config()
        mcfg = getattr(self.model, "config", None)
        mcfg = {k: v for k, v in dict(mcfg).items() if not k.startswith("_")} if mcfg is not None else {}
        cfg.update(kind=self.kind, model_class=type(self.model).__name__, model_config=mcfg,
                   model_prediction_type=self.model_prediction_type,
                   discrete_schedule=None if self.discrete is None else self.discrete.config,
                   timestep_scale=self.timestep_scale, text_seq_len=self.text_seq_len, text_dim=self.text_dim,
                   pooled_dim=self.pooled_dim, n_classes=self.n_classes, shift=self.shift,
                   time_ids=None if self.time_ids is None else list(self.time_ids), guidance=self.guidance)
        if self.rope_interpolation_scale is not None:  # video only: other adapters keep their ids
            cfg["rope_interpolation_scale"] = list(self.rope_interpolation_scale)
        return cfg

    def text_pooling(self) -> Optional[Dict]:
        """The layout of this adapter's packed text condition for the predictor's pooling (indis.predictor
        pool_packed_text: the paper's mean-pooled T5 tokens concatenated with the CLIP pooled vector), or None for a
        model without text. SD3 packs 77 CLIP tokens before the T5 ones (token_start 77 when the sequence is longer
        than 77); FLUX's sequence is T5 only; SD 1.x / 2.x / SDXL have CLIP tokens only, which are mean-pooled."""
        if self.cond_spec.kind != "text":
            return None
        start = 77 if self.kind == "transformer" and self.text_seq_len > 77 else 0
        return {"seq_len": self.text_seq_len, "dim": self.text_dim, "pooled_dim": self.pooled_dim, "token_start": start}

    @contextlib.contextmanager
    def export_context(self):
        """Entered by indis.export.onnx_export while tracing. FLUX: diffusers' apply_rotary_emb rotates the query and
        key pairs with x.reshape(*x.shape[:-1], -1, 2), which the TorchScript exporter records with the traced batch
        size as a constant (the graph then fails at any other batch); inside this context FluxTransformer2DModel
        uses `rotary_emb_traceable`, the same rotation as a product with a signed permutation matrix (exact: one
        +-1 per column), whose graph has no shapes. LTX-Video: the rotary embedding's
        `repeat_interleave(2, dim=-1)` makes the TorchScript ONNX exporter resolve the traced `-1` constant, which
        the tracer pools with every other `-1` of the graph, to axis 2 in place; the timestep embedding's
        `cat(dim=-1)` and `temb.view(batch, -1, D)` then read 2 (ONNX Runtime: "Concat axis must be in [-rank,
        rank-1]", "Reshape: invalid position of 0"). The rotary embedding depends only on the latent shape, so
        inside this context it returns its values for the adapter's shape, computed once before tracing (bit-equal;
        a constant [1, tokens, dim] in the graph), expanded to the batch. Other kinds: nothing changes."""
        if self.kind == "video":
            rope = self.model.rope
            pt, ps = video_patch(self.model.config)
            _, f, h, w = self.data_shape
            ref = next(self.model.parameters())
            with torch.no_grad():
                cos, sin = rope(torch.zeros(1, 1, 1, device=ref.device, dtype=ref.dtype), f // pt, h // ps, w // ps,
                                self.rope_interpolation_scale)
            rope.forward = lambda hidden_states, *args, **kwargs: (cos.expand(hidden_states.shape[0], -1, -1),
                                                                   sin.expand(hidden_states.shape[0], -1, -1))
            try:
                yield
            finally:
                del rope.forward  # the class's forward again
            return
        if self.kind != "flux":
            yield
            return
        import diffusers.models.transformers.transformer_flux as flux_module

        original = flux_module.apply_rotary_emb
        flux_module.apply_rotary_emb = rotary_emb_traceable
        try:
            yield
        finally:
            flux_module.apply_rotary_emb = original

    @property
    def image_seq_len(self) -> int:
        """The model's image token count for its latent shape (what FLUX's resolution-dependent shift, the rds
        schedule, is keyed on)."""
        return _image_tokens(self.model, self.kind, self.data_shape)

    def default_timesteps(self, n: int) -> Tensor:
        return default_schedule(self.process, n, self.shift)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The timestep the network is called at for process time t [B] (in t's dtype, at least float32)."""
        return model_timesteps(self.process, self.discrete, self.timestep_scale, t)

    def _text(self, cond: Tensor, dtype) -> Tuple[Tensor, Optional[Tensor]]:
        """(encoder_hidden_states [B, L, D], pooled [B, P] or None) from a packed text condition."""
        n_seq = self.text_seq_len * self.text_dim
        ehs = cond[:, :n_seq].reshape(cond.shape[0], self.text_seq_len, self.text_dim).to(dtype)
        return ehs, (cond[:, n_seq:].to(dtype) if self.pooled_dim else None)

    def predict(self, x, t, cond):
        p = next(self.model.parameters())
        dtype, b = p.dtype, x.shape[0]
        ts = self.model_timesteps(t).to(dtype)
        xin = x.to(dtype)
        if self.kind == "unet":
            kw = {} if cond is None else {"class_labels": cond.argmax(1)}
            out = self.model(xin, ts, return_dict=False, **kw)[0]
        elif self.kind == "dit":
            y = dit_class_labels(cond, self.n_classes, b, x.device)
            out = self.model(xin, timestep=ts, class_labels=y, return_dict=False)[0]
            out = out[:, : x.shape[1]]  # DiT-XL's learned sigma: the second half of the channels is the variance
        elif self.kind == "unet_text":
            ehs, pooled = self._text(cond, dtype)
            kw = {}
            if self.time_ids is not None:
                ids = torch.tensor(self.time_ids, dtype=dtype, device=x.device).expand(b, -1)
                kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids}
            out = self.model(xin, ts, encoder_hidden_states=ehs, return_dict=False, **kw)[0]
        elif self.kind == "transformer":
            ehs, pooled = self._text(cond, dtype)
            kw = dict(hidden_states=xin, timestep=ts, encoder_hidden_states=ehs, return_dict=False)
            if pooled is not None:
                kw["pooled_projections"] = pooled
            out = self.model(**kw)[0]
        elif self.kind == "video":  # LTXPipeline._pack_latents / _unpack_latents, all text tokens attended
            ehs, _ = self._text(cond, dtype)
            pt, ps = video_patch(self.model.config)
            c, f, h, w = self.data_shape
            packed = xin.reshape(b, c, f // pt, pt, h // ps, ps, w // ps, ps).permute(0, 2, 4, 6, 1, 3, 5, 7) \
                .reshape(b, (f // pt) * (h // ps) * (w // ps), c * pt * ps * ps)
            mask = torch.ones(b, self.text_seq_len, device=x.device, dtype=dtype)
            out = self.model(hidden_states=packed, encoder_hidden_states=ehs, timestep=ts, encoder_attention_mask=mask,
                             num_frames=f // pt, height=h // ps, width=w // ps,
                             rope_interpolation_scale=self.rope_interpolation_scale, return_dict=False)[0]
            out = out.reshape(b, f // pt, h // ps, w // ps, -1, pt, ps, ps).permute(0, 4, 1, 5, 2, 6, 3, 7) \
                .reshape(b, -1, f, h, w)
        else:  # flux: the pipeline's packing (FluxPipeline._pack_latents / _unpack_latents / _prepare_latent_image_ids)
            ehs, pooled = self._text(cond, dtype)
            c, h, w = self.data_shape
            packed = xin.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
            rows = torch.arange(h // 2, device=x.device, dtype=dtype)[:, None].expand(h // 2, w // 2)
            cols = torch.arange(w // 2, device=x.device, dtype=dtype)[None, :].expand(h // 2, w // 2)
            img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
            txt_ids = torch.zeros(self.text_seq_len, 3, device=x.device, dtype=dtype)
            kw = dict(hidden_states=packed, timestep=ts, encoder_hidden_states=ehs, pooled_projections=pooled,
                      img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
            if self.guidance is not None:
                kw["guidance"] = torch.full((b,), self.guidance, device=x.device, dtype=dtype)
            out = self.model(**kw)[0]
            out = out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return model_output_to_indis(out.to(x.dtype), x, t, self.process, self.model_prediction_type)
