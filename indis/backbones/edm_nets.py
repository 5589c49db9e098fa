"""EDM's network architectures (Karras et al. 2022), declared here so that EDM's published weights load by name.

SongUNet (DDPM++ / NCSN++), DhariwalUNet (ADM) and the EDMPrecond preconditioning wrapper (Karras et al. 2022,
Table 1). Module and parameter names follow EDM's `training/networks.py`, so that the `state_dict()` of an
EDM network loads into these classes with `load_state_dict(strict=True)`; the code itself is an independent
implementation.

Mixed precision as in EDM: parameters stay float32, every layer casts its weights to the dtype of its input,
attention logits and softmax run in float32, and EDMPrecond takes and returns float32 (the network body runs in
`compute_dtype`: float32, float16 or bfloat16).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

INIT_MODES = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")


def _init_tensor(shape, mode: str, fan_in: int, fan_out: int) -> Tensor:
    # in-place samplers: one pass over memory (random init of the 300M-parameter ImageNet net stays cheap)
    if mode == "xavier_uniform":
        b = math.sqrt(6.0 / (fan_in + fan_out))
        return torch.empty(*shape).uniform_(-b, b)
    if mode == "xavier_normal":
        return torch.empty(*shape).normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
    if mode == "kaiming_uniform":
        b = math.sqrt(3.0 / fan_in)
        return torch.empty(*shape).uniform_(-b, b)
    if mode == "kaiming_normal":
        return torch.empty(*shape).normal_(0.0, math.sqrt(1.0 / fan_in))
    raise ValueError(f"unknown init mode {mode!r}; expected one of {INIT_MODES}")


class Linear(torch.nn.Module):
    """y = x W^T + b with W [out, in]; weights are cast to the input dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fi, fo = in_features, out_features
        self.weight = torch.nn.Parameter(_init_tensor([out_features, in_features], init_mode, fi, fo).mul_(init_weight))
        self.bias = torch.nn.Parameter(_init_tensor([out_features], init_mode, fi, fo) * init_bias) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


class Conv2d(torch.nn.Module):
    """3x3/1x1 convolution with optional 2x FIR up/downsampling (kernel=0: resampling only, no weights)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[int] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fi, fo = in_channels * kernel * kernel, out_channels * kernel * kernel
        if kernel:
            self.weight = torch.nn.Parameter(_init_tensor([out_channels, in_channels, kernel, kernel], init_mode, fi, fo).mul_(init_weight))
            self.bias = torch.nn.Parameter(_init_tensor([out_channels], init_mode, fi, fo) * init_bias) if bias else None
        else:
            self.weight, self.bias = None, None
        f1 = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        filt = torch.outer(f1, f1)[None, None] / f1.sum() ** 2
        self.register_buffer("resample_filter", filt if (up or down) else None)

    def _resample(self, x: Tensor, f: Tensor, channels: int, up: bool, pad: int) -> Tensor:
        filt = f.expand(channels, 1, *f.shape[-2:])
        if up:
            return F.conv_transpose2d(x, filt * 4, groups=channels, stride=2, padding=pad)
        return F.conv2d(x, filt, groups=channels, stride=2, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        wp = w.shape[-1] // 2 if w is not None else 0
        fp = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and w is not None and self.up:
            x = F.conv2d(self._resample(x, f, self.in_channels, True, wp + fp), w)
        elif self.fused_resample and w is not None and self.down:
            x = self._resample(F.conv2d(x, w, padding=wp + fp), f, self.out_channels, False, 0)
        else:
            if self.up or self.down:
                x = self._resample(x, f, self.in_channels, self.up, fp)
            if w is not None:
                x = F.conv2d(x, w, padding=wp)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """softmax over keys of q^T k / sqrt(c), computed in float32 and returned in q's dtype. q, k: [n, c, L]."""
    scale = 1.0 / math.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.float(), k.float() * scale)
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(torch.nn.Module):
    """Residual block with timestep-embedding modulation, optional resampling and single/multi-head attention
    (the union of DDPM++, NCSN++ and ADM blocks)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: Optional[int] = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5, resample_filter=(1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True, init: Optional[Dict] = None,
                 init_zero: Optional[Dict] = None, init_attn: Optional[Dict] = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            k = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, k, up=up, down=down, resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = F.silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = F.silu(self.norm1(h + p))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            b, c = h.shape[:2]
            # channel layout of qkv: [head, channel-in-head, (q|k|v)], as in EDM's checkpoints
            qkv = self.qkv(self.norm2(h)).reshape(b * self.num_heads, c // self.num_heads, 3, -1)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            a = torch.einsum("nqk,nck->ncq", _attention_weights(q, k), v)
            h = (self.proj(a.reshape(h.shape)) + h) * self.skip_scale
        return h


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding [cos(x f), sin(x f)] with geometric frequencies f_j = max_positions^(-j/(n/2 - endpoint))."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1.0 / self.max_positions) ** j
        arg = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of NCSN++ (frequencies stored as a buffer `freqs`)."""

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        arg = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class SongUNet(torch.nn.Module):
    """DDPM++ (embedding 'positional', encoder 'standard') and NCSN++ ('fourier', 'residual', filter [1,3,3,1])."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"SongUNet: embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"SongUNet: encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"SongUNet: decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"SongUNet: img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        super().__init__()
        self.label_dropout = label_dropout
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        bk = dict(emb_channels=emb_ch, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                  resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                  init=init, init_zero=init_zero, init_attn=init_attn)

        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_ch)
        self.map_label = Linear(label_dim, noise_ch, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)

        self.enc = torch.nn.ModuleDict()
        c, caux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(c, model_channels, 3, **init)
                c = model_channels
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(c, c, down=True, **bk)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(caux, c, 1, **init)
                elif encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(caux, c, 3, down=True, resample_filter=resample_filter,
                                                               fused_resample=True, **init)
                    caux = c
            for i in range(num_blocks):
                cin, c = c, model_channels * mult
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, c, attention=r in attn_resolutions, **bk)
        skip_ch: List[int] = [m.out_channels for n, m in self.enc.items() if "aux" not in n]

        self.dec = torch.nn.ModuleDict()
        last = len(channel_mult) - 1
        for level in range(last, -1, -1):
            mult, r = channel_mult[level], img_resolution >> level
            if level == last:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(c, c, attention=True, **bk)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(c, c, **bk)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(c, c, up=True, **bk)
            for i in range(num_blocks + 1):
                cin, c = c + skip_ch.pop(), model_channels * mult
                attn = i == num_blocks and r in attn_resolutions
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin, c, attention=attn, **bk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < last:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True, resample_filter=resample_filter)
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(c, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(c, out_channels, 3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Optional[Tensor] = None,
                augment_labels: Optional[Tensor] = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        half = emb.shape[1] // 2
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)  # [sin, cos] order, as DDPM++ expects
        if self.map_label is not None:
            lab = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.label_dropout
                lab = lab * keep.to(lab.dtype)
            emb = emb + self.map_label(lab * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        # the embedding MLP runs in the dtype of the noise labels; the blocks cast it to their own dtype

        skips, aux = [], x
        for name, blk in self.enc.items():
            if "aux_down" in name:
                aux = blk(aux)
            elif "aux_skip" in name:
                x = x + blk(aux)
                skips[-1] = x
            elif "aux_residual" in name:
                x = (x + blk(aux)) / math.sqrt(2)
                skips[-1] = aux = x
            else:
                x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
                skips.append(x)

        out, tmp = None, None
        for name, blk in self.dec.items():
            if "aux_up" in name:
                out = blk(out)
            elif "aux_norm" in name:
                tmp = blk(x)
            elif "aux_conv" in name:
                tmp = blk(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if x.shape[1] != blk.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = blk(x, emb)
        return out


class DhariwalUNet(torch.nn.Module):
    """ADM (Dhariwal & Nichol 2021) as re-implemented in EDM."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        if img_resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"DhariwalUNet: img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        super().__init__()
        self.label_dropout = label_dropout
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        emb_ch = model_channels * channel_mult_emb
        s = math.sqrt(1 / 3)
        init = dict(init_mode="kaiming_uniform", init_weight=s, init_bias=s)
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        bk = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch, **init)
        self.map_layer1 = Linear(emb_ch, emb_ch, **init)
        self.map_label = (Linear(label_dim, emb_ch, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
                          if label_dim else None)

        self.enc = torch.nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv2d(c, model_channels * mult, 3, **init)
                c = model_channels * mult
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(c, c, down=True, **bk)
            for i in range(num_blocks):
                cin, c = c, model_channels * mult
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, c, attention=r in attn_resolutions, **bk)
        skip_ch = [m.out_channels for m in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        last = len(channel_mult) - 1
        for level in range(last, -1, -1):
            mult, r = channel_mult[level], img_resolution >> level
            if level == last:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(c, c, attention=True, **bk)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(c, c, **bk)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(c, c, up=True, **bk)
            for i in range(num_blocks + 1):
                cin, c = c + skip_ch.pop(), model_channels * mult
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin, c, attention=r in attn_resolutions, **bk)
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, 3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Optional[Tensor] = None,
                augment_labels: Optional[Tensor] = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            lab = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.label_dropout
                lab = lab * keep.to(lab.dtype)
            emb = emb + self.map_label(lab)
        emb = F.silu(emb)
        skips = []
        for blk in self.enc.values():
            x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
            skips.append(x)
        for blk in self.dec.values():
            if x.shape[1] != blk.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = blk(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


MODEL_TYPES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class EDMPrecond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4, class_labels) (Karras et al. 2022, Table 1).

    Args follow EDM (img_resolution, img_channels, label_dim, use_fp16, sigma_min, sigma_max, sigma_data,
    model_type, **model_kwargs). `compute_dtype` ("float32" | "float16" | "bfloat16") overrides use_fp16; the
    wrapper always takes and returns float32.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", compute_dtype: Optional[str] = None, **model_kwargs):
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.model_type = model_type
        self.model_kwargs = dict(model_kwargs)
        self.compute_dtype = compute_dtype if compute_dtype is not None else ("float16" if use_fp16 else "float32")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        self.model = MODEL_TYPES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                             out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def init_kwargs(self) -> Dict:
        """Constructor arguments (JSON-serialisable), enough to rebuild this network."""
        kw = dict(img_resolution=self.img_resolution, img_channels=self.img_channels, label_dim=self.label_dim,
                  use_fp16=self.use_fp16, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                  sigma_data=self.sigma_data, model_type=self.model_type, compute_dtype=self.compute_dtype)
        kw.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.model_kwargs.items()})
        return kw

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Optional[Tensor] = None, force_fp32: bool = False,
                **model_kwargs) -> Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(1, self.label_dim, device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = torch.float32 if force_fp32 else COMPUTE_DTYPES[self.compute_dtype]
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1.0 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
