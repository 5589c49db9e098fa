"""The backbone protocol: what every model that INDIS samples from declares.

A backbone is a torch module called as `backbone(x, t, cond) -> prediction` with x [B, *data_shape],
t [B] (one time per sample) and cond as its condition spec says. It declares:
  process          the noise process it was trained for (indis.processes)
  prediction_type  "eps", "x0" or "velocity"
  data_shape       shape of one sample
  cond_spec        CondSpec: kind "none" | "class" | "text", and its dimension
  backbone_id      a stable id: a hash of its configuration and weights. Teacher datasets, predictors and
                   engines record it and refuse a mismatch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch

from ..processes import PREDICTION_TYPES, Process, get_process

Tensor = torch.Tensor
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name) -> torch.dtype:
    """A torch dtype from its name (float32, float64, float16, bfloat16) or a torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


COND_KINDS = ("none", "class", "text")


@dataclass(frozen=True)
class CondSpec:
    """kind: "none", "class" (integer labels [B] or one-hot [B, dim]) or "text" (pooled embeddings [B, dim])."""

    kind: str = "none"
    dim: int = 0

    def __post_init__(self):
        if self.kind not in COND_KINDS:
            raise ValueError(f"unknown condition kind {self.kind!r}; expected one of {COND_KINDS}")
        if self.kind == "none" and self.dim != 0:
            raise ValueError("a condition of kind 'none' has dim 0")
        if self.kind != "none" and self.dim < 1:
            raise ValueError(f"a condition of kind {self.kind!r} needs dim >= 1")

    def to_dict(self) -> Dict:
        return asdict(self)

    def check(self, cond, batch: int, where: str = "backbone") -> Optional[Tensor]:
        """Validate a condition for a batch and return it (class labels as one-hot floats)."""
        if self.kind == "none":
            if cond is not None:
                raise ValueError(f"{where}: this model is unconditional but a condition was given")
            return None
        if cond is None:
            raise ValueError(f"{where}: this model needs a {self.kind} condition of dim {self.dim}")
        if not isinstance(cond, Tensor):
            cond = torch.as_tensor(cond)
        if self.kind == "class" and cond.dim() == 1 and not cond.is_floating_point():
            if cond.shape[0] != batch or (cond < 0).any() or (cond >= self.dim).any():
                raise ValueError(f"{where}: class labels must be {batch} integers in [0, {self.dim})")
            return torch.nn.functional.one_hot(cond.long(), self.dim).float()
        if cond.dim() != 2 or cond.shape != (batch, self.dim):
            raise ValueError(f"{where}: {self.kind} condition must have shape [{batch}, {self.dim}], got {tuple(cond.shape)}")
        return cond


def stable_hash(config: Dict, tensors: Optional[Dict[str, Tensor]] = None, n_hex: int = 16) -> str:
    """sha256 over a canonical JSON of the config and the raw bytes of the tensors (sorted by name)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(tensors or {}):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim tensors too
    return h.hexdigest()[:n_hex]


class Backbone(torch.nn.Module):
    """Base class of backbones. Subclasses set the attributes in __init__ and implement `predict`."""

    process: Process
    prediction_type: str
    data_shape: Tuple[int, ...]
    cond_spec: CondSpec = CondSpec()

    def __init__(self, process, prediction_type: str, data_shape, cond_spec: CondSpec = CondSpec()):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.process = get_process(process)
        self.prediction_type = prediction_type
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self._id_cache: Optional[str] = None

    def config(self) -> Dict:
        """JSON-serialisable description (architecture, process, prediction type, shapes)."""
        return {
            "class": type(self).__name__,
            "process": self.process.config(),
            "prediction_type": self.prediction_type,
            "data_shape": list(self.data_shape),
            "cond_spec": self.cond_spec.to_dict(),
        }

    @property
    def backbone_id(self) -> str:
        """Hash of config() and every parameter and buffer. Cached; call `refresh_id()` after changing weights."""
        if self._id_cache is None:
            self._id_cache = stable_hash(self.config(), dict(self.state_dict()))
        return self._id_cache

    def refresh_id(self) -> str:
        self._id_cache = None
        return self.backbone_id

    def check_inputs(self, x: Tensor, t: Tensor, cond):
        if x.dim() != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"{type(self).__name__}: x must have shape [B, {', '.join(map(str, self.data_shape))}], got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"{type(self).__name__}: t must be a scalar or have shape [{b}], got {tuple(t.shape)}")
        return t, self.cond_spec.check(cond, b, type(self).__name__)

    def forward(self, x: Tensor, t, cond=None) -> Tensor:
        t, cond = self.check_inputs(x, t, cond)
        return self.predict(x, t, cond)

    def predict(self, x: Tensor, t: Tensor, cond: Optional[Tensor]) -> Tensor:
        raise NotImplementedError


def check_backbone_id(expected: str, backbone, what: str) -> None:
    """Raise ValueError if `backbone`'s id differs from the id recorded in an artifact."""
    got = backbone.backbone_id if not isinstance(backbone, str) else backbone
    if got != expected:
        raise ValueError(
            f"{what} was made for backbone id {expected}, but the given backbone has id {got}; "
            "regenerate it for this backbone or load the matching backbone"
        )
