"""INDIS inside diffusers: a pipeline that runs each sample's own schedule in one batched call, and a scheduler
for users who keep their own denoising loop.

`IndisPipeline.from_pipe(pipe, predictor=...)` takes a diffusers pipeline (object or local folder) and an INDIS
predictor (module or predictor.safetensors). A call draws x_T per seed exactly as `indis sample` does
(indis.sampling.seeds: one CPU generator per sample, so a seed gives the same image in any batch), predicts every
sample's discretization {tau, dtau, gamma} in one predictor call, and integrates the whole batch in one sampler call
(indis.sampling.sampler.Sampler: the native loop for Euler / iPNDM / DPM-Solver++(2M) when indis._C is built, else
indis.solvers.sample) with classifier-free guidance as one doubled batch per network call
(indis.sampling.guidance.GuidedBackbone), then decodes latents with the pipeline's VAE.

It is a plain class with diffusers' call conventions, not a `diffusers.DiffusionPipeline` subclass: the INDIS
predictor and the adapter are not diffusers components, so DiffusionPipeline's save_pretrained / from_pretrained
could not store or find them. The diffusers pipeline stays available as `.pipe` (text encoders, VAE, tokenizers).

`IndisScheduler` (SchedulerMixin, ConfigMixin) steps a user's own loop through per-sample schedules with the INDIS
multistep update (indis.solvers.linear_form); its limits are in its docstring and docs/diffusers.md.

Needs diffusers (`pip install indis[diffusers]`); importing this module without it raises an ImportError that says so.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .backbones.diffusers import (DiffusersAdapter, DiscreteSchedule, default_schedule, model_output_to_indis,
                                 model_timesteps, pack_text_cond, require_diffusers, resolve_prediction_type)
from .discretization import Discretization
from .processes import _bcast, get_process
from .sampling.load import load_predictor
from .sampling.sampler import Sampler, Timings
from .sampling.seeds import draw, unit_noise_from_generators
from .solvers import _check_schedule, get_solver, linear_form, unpack_discretization

require_diffusers()
from diffusers import DiffusionPipeline  # noqa: E402
from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402
from diffusers.utils import BaseOutput  # noqa: E402

Tensor = torch.Tensor
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class IndisPipelineOutput(BaseOutput):
    """images: PIL images, an NHWC numpy array, an NCHW tensor in [0, 1], or the latents (output_type "latent");
    seeds: the seed of each image (None where generators were given); discretization: each sample's timesteps
    [B, N+1], dtau [B, N], gamma [B, N]; timings: the sampler's Timings (path taken, milliseconds)."""

    images: Any
    seeds: Optional[List[int]]
    discretization: Discretization
    timings: Timings


def _noise_from_generators(generators: Sequence[torch.Generator], data_shape, prior_std: float, n_choices: int = 0):
    """x_T [B, *data_shape] (float32) and, if n_choices, an index [B] from one generator per sample, in the draw order
    of indis.sampling.seeds (noise, then the index), so that torch.Generator().manual_seed(s) gives seed s's x_T."""
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator must be a list of torch.Generator (one per image), got {type(g).__name__}")
    noise, idx = unit_noise_from_generators(generators, data_shape, n_choices)
    return (noise.double() * float(prior_std)).float(), idx


class IndisPipeline:
    """Per-sample INDIS schedules for a diffusers model, the whole batch in one call (see the module docstring).

    backbone: the DiffusersAdapter of the pipeline's denoiser (its VAE, if any, decodes).
    predictor: an INDIS predictor (Predictor / GlobalDiscretization / ...): (x_T, cond) -> Discretization.
    solver, order: the few-step solver the predictor was trained for (default: the predictor's metadata, else ipndm).
    pipe: the diffusers pipeline, for prompt encoding (pipe.encode_prompt); None when only embeddings are given.
    guidance_scale: default classifier-free guidance scale (default: the training run's cfg_scale, else 1).
    backend: the Sampler's loop: "auto" (native loop when it can), "native" or "python".
    """

    def __init__(self, backbone: DiffusersAdapter, predictor: torch.nn.Module, solver: Optional[str] = None,
                 order: Optional[int] = None, pipe=None, guidance_scale: float = 1.0, backend: str = "auto",
                 cuda_graph: bool = False):
        if not isinstance(backbone, DiffusersAdapter):
            raise ValueError(f"backbone must be a DiffusersAdapter, got {type(backbone).__name__}")
        nfe = getattr(getattr(predictor, "param", None), "nfe", None)
        if nfe is None:
            raise ValueError(f"predictor must be an INDIS predictor (with .param), got {type(predictor).__name__}")
        if tuple(getattr(predictor, "data_shape", backbone.data_shape)) != tuple(backbone.data_shape):
            raise ValueError(f"the predictor was built for data shape {tuple(predictor.data_shape)}, the backbone's "
                             f"latents are {tuple(backbone.data_shape)}")
        if predictor.param.process.config() != backbone.process.config():
            raise ValueError(f"the predictor's process {predictor.param.process.config()} is not the backbone's "
                             f"{backbone.process.config()}: it was trained for another model or scheduler")
        self.backbone, self.predictor, self.pipe = backbone.eval(), predictor.eval(), pipe
        self.solver = get_solver(solver or "ipndm").name
        self.order = order
        self.guidance_scale = float(guidance_scale)
        self.backend, self.cuda_graph = backend, cuda_graph

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_pipe(cls, pipe, predictor, solver: Optional[str] = None, order: Optional[int] = None,
                  guidance_scale: Optional[float] = None, backend: str = "auto", cuda_graph: bool = False,
                  torch_dtype: Optional[torch.dtype] = None, **adapter_kwargs) -> "IndisPipeline":
        """pipe: a diffusers pipeline object, a LOCAL pipeline folder (loaded with local_files_only), a model folder
        or object, or a DiffusersAdapter. predictor: a predictor module or a predictor.safetensors path (its recorded
        backbone id must match; its solver and guidance scale become the defaults). adapter_kwargs: passed to
        DiffusersAdapter.from_pretrained (text_seq_len, data_shape, ...)."""
        index_path = os.path.join(os.fspath(pipe), "model_index.json") if isinstance(pipe, (str, os.PathLike)) else ""
        if index_path and os.path.isfile(index_path):
            with open(index_path) as f:  # components saved as absent (e.g. text encoders set to None) stay None
                kw = {k: None for k, v in json.load(f).items()
                      if not k.startswith("_") and isinstance(v, list) and (len(v) != 2 or v[1] is None)}
            if torch_dtype is not None:
                kw["torch_dtype"] = torch_dtype
            pipe = DiffusionPipeline.from_pretrained(os.fspath(pipe), local_files_only=True, low_cpu_mem_usage=False, **kw)
        if isinstance(pipe, DiffusersAdapter):
            if adapter_kwargs:
                raise ValueError(f"adapter arguments {sorted(adapter_kwargs)} cannot be applied to a DiffusersAdapter")
            bb, diffusers_pipe = pipe, None
        else:
            bb = DiffusersAdapter.from_pretrained(pipe, torch_dtype=torch_dtype, **adapter_kwargs)
            diffusers_pipe = pipe if isinstance(pipe, DiffusionPipeline) else None
        meta: Dict = {}
        if isinstance(predictor, (str, os.PathLike)):
            predictor, meta = load_predictor(predictor, bb.backbone_id)
        if guidance_scale is None:
            guidance_scale = float((meta.get("train_config") or {}).get("cfg_scale", 1.0))
        if solver is None and meta.get("solver"):
            solver = meta["solver"]
            order = (meta.get("train_config") or {}).get("order") if order is None else order
        return cls(bb, predictor, solver, order, diffusers_pipe, guidance_scale, backend, cuda_graph)

    def to(self, device=None, dtype=None) -> "IndisPipeline":
        """Move the denoiser (and VAE), the predictor and the diffusers pipeline's other components."""
        kw = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if self.pipe is not None:
            self.pipe.to(**kw)
        self.backbone.to(**kw)
        if self.backbone.vae is not None:
            self.backbone.vae.to(**kw)
        if device is not None:  # the predictor keeps its dtype (it is small; its schedules are float32)
            self.predictor.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.model.parameters()).device

    # -- conditions --------------------------------------------------------------------------------
    def encode_prompt(self, prompt: List[str], negative_prompt: Optional[List[str]] = None):
        """(cond [B, dim], negative cond [B, dim] or None) from prompts with the pipeline's text encoders, packed as
        the adapter takes them (pack_text_cond)."""
        bb, pipe = self.backbone, self.pipe
        if pipe is None or not hasattr(pipe, "encode_prompt") or getattr(pipe, "text_encoder", None) is None:
            raise ValueError("prompts need the diffusers pipeline's text encoders (this one has none): pass "
                             "prompt_embeds= (and pooled_prompt_embeds=, negative_prompt_embeds=, ...) instead")
        dev, neg = self.device, negative_prompt is not None
        with torch.no_grad():
            if bb.kind == "transformer":  # SD3: CLIP (77 tokens) then T5
                pe, npe, pp, npp = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device=dev,
                                                      do_classifier_free_guidance=neg, negative_prompt=negative_prompt,
                                                      max_sequence_length=bb.text_seq_len - 77)
            elif bb.kind == "flux":
                pe, pp, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=dev, max_sequence_length=bb.text_seq_len)
                npe, npp = (pipe.encode_prompt(prompt=negative_prompt, prompt_2=None, device=dev,
                                               max_sequence_length=bb.text_seq_len)[:2] if neg else (None, None))
            elif bb.pooled_dim:  # SDXL
                pe, npe, pp, npp = pipe.encode_prompt(prompt=prompt, device=dev, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=neg, negative_prompt=negative_prompt)
            else:  # SD 1.x / 2.x
                pe, npe = pipe.encode_prompt(prompt, dev, 1, neg, negative_prompt)
                pp = npp = None
        return pack_text_cond(pe, pp), (pack_text_cond(npe, npp) if neg else None)

    def _text_cond(self, embeds: Tensor, pooled: Optional[Tensor], what: str) -> Tensor:
        bb = self.backbone
        if embeds.dim() != 3 or embeds.shape[1:] != (bb.text_seq_len, bb.text_dim):
            raise ValueError(f"{what} must have shape [B, {bb.text_seq_len}, {bb.text_dim}] for this adapter "
                             f"(text_seq_len {bb.text_seq_len}), got {tuple(embeds.shape)}")
        if bool(bb.pooled_dim) != (pooled is not None):
            raise ValueError(f"this model {'takes' if bb.pooled_dim else 'takes no'} pooled text embeddings "
                             f"(pooled_dim {bb.pooled_dim}): {'pass' if bb.pooled_dim else 'do not pass'} the pooled "
                             f"embeddings with {what}")
        return pack_text_cond(embeds, pooled)

    # -- the call ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: Union[str, List[str], None] = None, class_labels=None, seeds=None,
                 generator: Union[torch.Generator, List[torch.Generator], None] = None, num_images: Optional[int] = None,
                 num_images_per_prompt: int = 1, guidance_scale: Optional[float] = None,
                 negative_prompt: Union[str, List[str], None] = None, prompt_embeds: Optional[Tensor] = None,
                 pooled_prompt_embeds: Optional[Tensor] = None, negative_prompt_embeds: Optional[Tensor] = None,
                 negative_pooled_prompt_embeds: Optional[Tensor] = None, output_type: str = "pil",
                 return_dict: bool = True):
        """Images for a batch, each sample on its own predicted schedule, in one sampler call.

        Batch: the prompts (or prompt_embeds rows) times num_images_per_prompt, the class labels, the seeds, the
        generators or num_images, whichever are given (they must agree). Noise: `seeds` (x_T of each seed as
        `indis sample` and indis.sampling.seeds draw it), or one torch.Generator per image (a CPU generator seeded
        with s gives seed s's noise), or, with neither, random seeds (returned in the output). A class-conditional
        model without class_labels takes each seed's label from its stream, as `indis sample`.
        guidance_scale: classifier-free guidance, cond and uncond in one doubled batch per network call. The
        unconditional input is negative_prompt / negative_prompt_embeds when given, else the all-zero condition
        that INDIS's teacher and training use (so the default matches the trained predictor and `indis sample`).
        FLUX-dev's embedded guidance is not this scale but an adapter setting (from_pipe(..., guidance=3.5)).
        output_type: "pil", "np", "pt" (decoded with the pipeline's VAE when it has one, in [0, 1]) or "latent".
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        bb, cs = self.backbone, self.backbone.cond_spec
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        if isinstance(generator, torch.Generator):
            generator = [generator]
        if seeds is not None and generator is not None:
            raise ValueError("give seeds or generator, not both")

        # the condition of each image (before noise: it fixes the batch size)
        cond = null = None
        if cs.kind == "text":
            if class_labels is not None:
                raise ValueError("this model is text-conditional: give prompt or prompt_embeds, not class_labels")
            if (prompt is None) == (prompt_embeds is None):
                raise ValueError("this model is text-conditional: give prompt= (needs the pipeline's text encoders) "
                                 "or prompt_embeds=, exactly one")
            if prompt is not None:
                prompt = [prompt] if isinstance(prompt, str) else list(prompt)
                if isinstance(negative_prompt, str):
                    negative_prompt = [negative_prompt] * len(prompt)
                cond, null = self.encode_prompt(prompt, negative_prompt)
            else:
                cond = self._text_cond(prompt_embeds, pooled_prompt_embeds, "prompt_embeds")
                if negative_prompt_embeds is not None:
                    null = self._text_cond(negative_prompt_embeds, negative_pooled_prompt_embeds, "negative_prompt_embeds")
            if null is not None and null.shape[0] != cond.shape[0]:
                raise ValueError(f"{null.shape[0]} negative conditions for {cond.shape[0]} prompts")
            cond = cond.repeat_interleave(num_images_per_prompt, 0)
            null = None if null is None else null.repeat_interleave(num_images_per_prompt, 0)
            batch = cond.shape[0]
        else:
            if prompt is not None or prompt_embeds is not None:
                raise ValueError(f"{type(bb.model).__name__} is not text-conditional (condition: {cs.kind}); "
                                 "it takes no prompt")
            if class_labels is not None:
                if cs.kind != "class":
                    raise ValueError(f"{type(bb.model).__name__} takes no class labels (num_class_embeds is not set)")
                cond = torch.as_tensor(class_labels, dtype=torch.int64).flatten().repeat_interleave(num_images_per_prompt)
            batch = None if cond is None else cond.shape[0]
        sizes = {k: v for k, v in (("conditions", batch), ("seeds", None if seeds is None else len(seeds)),
                                   ("generators", None if generator is None else len(generator)),
                                   ("num_images", num_images)) if v is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the batch sizes disagree: {sizes}")
        if not sizes:
            raise ValueError("give seeds, generator, num_images or (for conditional models) the conditions")
        batch = next(iter(sizes.values()))
        if batch < 1:
            raise ValueError("the batch is empty")

        # x_T (and a class label per seed when none was given) from the per-sample streams
        prior_std = bb.process.prior_std()
        draw_labels = cs.kind == "class" and cond is None
        if generator is not None:
            x_T, idx = _noise_from_generators(generator, bb.data_shape, prior_std, cs.dim if draw_labels else 0)
        else:
            if seeds is None:
                seeds = torch.randint(0, 2**31 - 1, (batch,)).tolist()
            seeds = [int(s) for s in seeds]
            x_T, idx = draw(seeds, bb.data_shape, prior_std, cs if draw_labels else type(cs)())
        if draw_labels:
            cond = idx
        dev = self.device
        x_T = x_T.to(dev)
        c = cs.check(None if cond is None else cond.to(dev), batch, "IndisPipeline")
        if scale != 1.0 and c is None:
            raise ValueError("guidance_scale != 1 needs a conditional model")

        sampler = Sampler(bb, self.predictor, solver=self.solver, order=self.order, loop=self.backend,
                          cfg_scale=scale, null_cond=None if null is None else null.to(dev), device=dev,
                          state_dtype=torch.float32, cuda_graph=self.cuda_graph)
        res = sampler.sample(x_T, c)
        images = self.postprocess(res.x0, output_type)
        out = IndisPipelineOutput(images=images, seeds=seeds if generator is None else None,
                                  discretization=res.discretization.detach(), timings=res.timings)
        return out if return_dict else (images,)

    def postprocess(self, x0: Tensor, output_type: str = "pil"):
        """Latents -> images as the diffusers pipelines give them: VAE decode (when the pipeline has a VAE; a
        pixel-space model's samples are the images), then [-1, 1] -> [0, 1] and the output type."""
        if output_type == "latent":
            return x0
        if self.backbone.vae is None and self.backbone.kind != "unet":
            raise ValueError(f"{type(self.backbone.model).__name__} samples latents and this pipeline has no VAE to "
                             f"decode them for output_type {output_type!r}: use output_type='latent', or build the "
                             "pipeline from a diffusers pipeline (object or folder) that has its VAE")
        img = self.backbone.decode(x0) if self.backbone.vae is not None else x0
        return VaeImageProcessor(do_normalize=True).postprocess(img.float(), output_type=output_type)


class IndisScheduler(SchedulerMixin, ConfigMixin):
    """Per-sample INDIS schedules in a diffusers-style loop you keep:

        sched = IndisScheduler.from_backbone(adapter, solver="ipndm")
        sched.set_timesteps(discretization=predictor(x_T, cond))     # or sigmas=[B, N+1], or timesteps=[B, N+1]
        x = x_T                                                       # INDIS's prior: sched.init_noise_sigma * noise
        for t in sched.timesteps:                                     # t: [B], each sample's own model timestep
            out = model(sched.scale_model_input(x, t), t, ...).sample
            x = sched.step(out, t, x).prev_sample

    The state is the process variable x (x = alpha x0 + sigma eps: what DDPM-style models and flow transformers
    take as they are), so scale_model_input returns its input. `timesteps` are the model timesteps at each sample's
    call times (a DDPM model's fractional discrete timestep, a flow model's 1000 t): [N, B] for per-sample schedules,
    [N] for one shared schedule. `step` applies the INDIS multistep update of the configured solver
    (indis.solvers.linear_form: Euler, iPNDM, DPM-Solver++(2M)) with each sample's own coefficients.

    Limits: the batch passed to `step` must equal the schedule's batch (per-sample schedules; for classifier-free
    guidance combine the doubled batch's outputs before `step`); steps must be taken once per entry of `timesteps`,
    in order (a mismatch raises); dtau and gamma apply only when given (a Discretization or dtau= / gamma=: the
    call times shift by dtau, the eps-prediction scales by gamma) - plain `sigmas` carry neither; UniPC (its
    corrector re-enters the previous step) is not offered here (use IndisPipeline or indis.sample); the state is
    not diffusers' VE-scaled y = x / alpha of EulerDiscreteScheduler, so the prior is x_T = init_noise_sigma * noise
    (1 for VP and flow processes).
    """

    order = 1
    config_name = "scheduler_config.json"
    _compatibles: List[str] = []

    @register_to_config
    def __init__(self, process: Optional[Dict] = None, model_prediction_type: str = "epsilon",
                 discrete_schedule: Optional[Dict] = None, timestep_scale: Optional[float] = 1000.0,
                 shift: float = 1.0, solver: str = "ipndm", solver_order: Optional[int] = None):
        self.process = get_process(process or "flow")
        self.discrete = None if discrete_schedule is None else DiscreteSchedule(discrete_schedule)
        if self.discrete is None and timestep_scale is None:
            raise ValueError("give discrete_schedule (DDPM-style models) or timestep_scale (flow models)")
        self.prediction_type = resolve_prediction_type(model_prediction_type, self.process)
        s = get_solver(solver)
        if s.name not in ("euler", "ipndm", "dpmpp_2m"):
            raise ValueError(f"IndisScheduler steps Euler, iPNDM and DPM-Solver++(2M); {s.name!r} is not offered "
                             "(UniPC's corrector re-enters the previous step: use IndisPipeline or indis.sample)")
        self.solver = s
        self.solver_order = s.check_order(solver_order)
        self.timesteps: Optional[Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self._ts = self._dtau = self._gamma = None
        self._step_index, self._hist = 0, []

    @classmethod
    def from_backbone(cls, backbone: DiffusersAdapter, solver: str = "ipndm", solver_order: Optional[int] = None):
        """The scheduler of a DiffusersAdapter's model: its process, prediction type and timestep map."""
        return cls(process=backbone.process.config(), model_prediction_type=backbone.model_prediction_type,
                   discrete_schedule=None if backbone.discrete is None else backbone.discrete.config,
                   timestep_scale=backbone.timestep_scale, shift=backbone.shift, solver=solver, solver_order=solver_order)

    @property
    def init_noise_sigma(self) -> float:
        """The prior's standard deviation: x_T = init_noise_sigma * N(0, I) (as indis.sampling.seeds)."""
        return self.process.prior_std()

    @property
    def step_index(self) -> int:
        return self._step_index

    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        return sample

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The model timestep of process times t (as DiffusersAdapter.model_timesteps)."""
        return model_timesteps(self.process, self.discrete, self.config.timestep_scale, t)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None, sigmas=None, timesteps=None,
                      discretization: Optional[Discretization] = None, dtau=None, gamma=None):
        """The schedule, one of:
        discretization: an INDIS Discretization (a predictor's output: timesteps [B, N+1], dtau, gamma);
        timesteps: INDIS process times [N+1] or [B, N+1] (with optional dtau / gamma [N] or [B, N]);
        sigmas: noise levels [N+1] or [B, N+1] as diffusers names them (flow: sigma = t; VP: sigma / alpha;
          EDM: sigma), decreasing to the last level, which must be > 0 (INDIS ends at t0, not at 0);
        num_inference_steps: the process's uniform schedule (flow models: shifted by the scheduler's shift)."""
        given = [v is not None for v in (num_inference_steps, sigmas, timesteps, discretization)]
        if sum(given) != 1:
            raise ValueError("set_timesteps takes exactly one of num_inference_steps, sigmas, timesteps, discretization")
        p = self.process
        if discretization is not None:
            ts, dtau, gamma = unpack_discretization(discretization, dtau, gamma)
        elif sigmas is not None:
            sig = torch.as_tensor(sigmas, dtype=torch.float64)
            if not (sig > 0).all():
                raise ValueError("sigmas must be > 0: INDIS schedules end at the process's t0, not at sigma 0")
            ts = sig if p.name == "flow" else p.t_from_log_snr(-sig.log())
        elif timesteps is not None:
            ts = torch.as_tensor(timesteps, dtype=torch.float64)
        else:
            ts = default_schedule(p, num_inference_steps, float(self.config.shift))
        ts = torch.as_tensor(ts).detach()
        rows = [v.shape[0] for v in (ts, dtau, gamma) if v is not None and torch.as_tensor(v).dim() == 2]
        ts, n, dtau, gamma = _check_schedule(p, torch.zeros(max(rows, default=1), 1), ts, dtau, gamma)
        f = lambda v: None if v is None else torch.as_tensor(v).detach().to(device=device, dtype=torch.float64)
        self._shared = not rows  # one schedule for any batch
        self._ts, self._dtau, self._gamma = f(ts), f(dtau), f(gamma)
        self.num_inference_steps = n
        call = self._per_sample(self._ts, torch.float64, max(rows, default=1))[:, :-1]
        if self._dtau is not None:
            call = call + self._per_sample(self._dtau, torch.float64, call.shape[0])
        self._call = call
        mt = self.model_timesteps(call).float().t().contiguous()  # [N, B]
        self.timesteps = mt[:, 0].contiguous() if self._shared else mt
        self._step_index, self._hist = 0, []

    def _per_sample(self, v: Tensor, dtype, b: Optional[int] = None) -> Tensor:
        v = v.to(dtype)
        if v.dim() == 1:
            v = v.unsqueeze(0)
        return v if b is None or v.shape[0] == b else v.expand(b, -1)

    def step(self, model_output: Tensor, timestep, sample: Tensor, return_dict: bool = True):
        """One INDIS multistep update of every sample from its tau_i to tau_{i+1}. model_output: the model's output
        (under the model's prediction type) at `sample` and `timestep` (this step's entry of `timesteps`)."""
        if self._ts is None:
            raise ValueError("call set_timesteps before step")
        i, n = self._step_index, self.num_inference_steps
        if i >= n:
            raise ValueError(f"all {n} steps were taken; call set_timesteps again for a new run")
        b = sample.shape[0]
        nb = self._call.shape[0]
        if not self._shared and b != nb:
            raise ValueError(f"step got a batch of {b} but the schedule has {nb} per-sample rows: the batch must match "
                             "(for classifier-free guidance combine the cond and uncond outputs before step)")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output {tuple(model_output.shape)} and sample {tuple(sample.shape)} differ in shape")
        want = self.timesteps[i].to(sample.device).flatten()
        got = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).flatten()
        if not (got.numel() in (1, want.numel()) or want.numel() == 1) or \
                not torch.allclose(got, want, rtol=1e-5, atol=1e-4):
            raise ValueError(f"step {i} expects timestep {want.tolist()} (entry {i} of scheduler.timesteps), got "
                             f"{got.tolist()}: call step once per entry of timesteps, in order")
        sd = sample.dtype if sample.dtype in (torch.float32, torch.float64) else torch.float32
        x = sample.to(sd)
        ts = self._per_sample(self._ts.to(sample.device), sd, b)
        tc = self._call.to(device=sample.device, dtype=sd).expand(b, -1)[:, i]
        p = self.process
        pred = model_output_to_indis(model_output.to(sd), x, tc, p, self.config.model_prediction_type)
        eps = p.to_eps(pred, x, tc, self.prediction_type)
        if self._gamma is not None:
            eps = _bcast(self._per_sample(self._gamma.to(sample.device), sd, b)[:, i], eps) * eps
        h = eps if self.solver.basis == "eps" else p.to_x0(eps, x, ts[:, i], "eps")
        self._hist = ([h] + self._hist)[: self.solver.max_order]
        u, w = linear_form(self.solver, p, ts, i, None, self.solver_order)
        prev = _bcast(u, x) * x
        for j in range(w.shape[1]):
            prev = prev + _bcast(w[:, j], x) * self._hist[j]
        x0 = p.to_x0(eps, x, ts[:, i], "eps")
        self._step_index += 1
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return (prev, x0)
        return IndisSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.num_inference_steps or 0


@dataclass
class IndisSchedulerOutput(BaseOutput):
    """prev_sample: the state at the next time; pred_original_sample: this step's x0 estimate."""

    prev_sample: Tensor
    pred_original_sample: Tensor
