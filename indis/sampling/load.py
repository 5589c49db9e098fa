"""Reading a saved discretization model (predictor.safetensors): any kind a run writes, the instance-aware
Predictor, the global baselines (GOD, LD3), fixed schedules and the peers (PeerSchedule, AMED-Plugin, Sampled
wrappers) are rebuilt from the config in the file's metadata; indis.predictor.save_predictor writes them."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from ..backbones.base import CondSpec
from ..baselines.amed import AMEDPlugin
from ..baselines.common import PeerSchedule, Sampled
from ..baselines.ld3 import LD3Discretization
from ..discretization import DiscretizationParam
from ..io import load_tensors
from ..predictor import GlobalDiscretization, Predictor
from .fixed import FixedDiscretization

Tensor = torch.Tensor


def build_from_config(cfg: Dict, device=None) -> nn.Module:
    """Rebuild a Predictor or GlobalDiscretization (untrained) from its config(). device="meta" builds it
    without memory (load_predictor checks a file's config against its weights that way first)."""
    cfg = dict(cfg)
    kind = cfg.pop("class")
    if kind == "Sampled":  # a learned discretization with the sampler options it was trained with
        return Sampled(build_from_config(cfg.pop("inner"), device=device), **cfg)
    param = DiscretizationParam.from_config(cfg.pop("param"))
    cond_spec = CondSpec(**cfg.pop("cond_spec"))
    if device is not None:
        with torch.device(device):
            return _build(kind, param, cond_spec, cfg)
    return _build(kind, param, cond_spec, cfg)


def _build(kind: str, param: DiscretizationParam, cond_spec: CondSpec, cfg: Dict) -> nn.Module:
    if kind == "Predictor":
        return Predictor(param, cfg.pop("data_shape"), cond_spec, **cfg)
    if kind == "GlobalDiscretization":
        return GlobalDiscretization(param, data_shape=cfg.pop("data_shape"), cond_spec=cond_spec)
    if kind == "LD3Discretization":
        return LD3Discretization(param, data_shape=cfg.pop("data_shape"), cond_spec=cond_spec, **cfg)
    if kind == "FixedDiscretization":
        return FixedDiscretization(param, torch.zeros(param.nfe + 1, dtype=torch.float64), cond_spec=cond_spec, **cfg)
    if kind == "AMEDPlugin":
        return AMEDPlugin(param, data_shape=cfg.pop("data_shape"), cond_spec=cond_spec, **cfg)
    if kind == "PeerSchedule":
        return PeerSchedule(param, torch.zeros(param.nfe + 1, dtype=torch.float64), cond_spec=cond_spec, **cfg)
    raise ValueError(f"unknown predictor class {kind!r}")


def load_predictor(path, backbone_id: Optional[str] = None):
    """(model, metadata). If backbone_id is given it must match the one recorded at training time."""
    tensors, meta = load_tensors(path)
    if "config" not in meta:
        raise ValueError(f"{path}: metadata has no predictor config")
    if backbone_id is not None and meta.get("backbone_id") not in (None, backbone_id):
        raise ValueError(
            f"{path} was trained for backbone id {meta.get('backbone_id')}, but the given backbone has id {backbone_id}"
        )
    _check_config_fits(path, meta["config"], tensors)
    model = build_from_config(meta["config"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return model, meta


def _check_config_fits(path, cfg, tensors: Dict[str, Tensor]) -> None:
    """Build the config's module on the meta device (no memory) and compare every parameter and buffer shape
    with the weights the file holds, before the real module is built: a config that asks for more than the
    file holds (hidden=200000 with small weights: 160 GB) is refused here instead of being allocated."""
    inner = cfg
    while isinstance(inner, dict) and inner.get("class") == "Sampled":  # sampler options around a learned model
        inner = inner.get("inner")
    if not isinstance(inner, dict) or not isinstance(inner.get("param"), dict) or not isinstance(inner.get("cond_spec"), dict):
        raise ValueError(f"{path}: the predictor config is not an object with 'class', 'param' and 'cond_spec' "
                         "(or a Sampled object with such an 'inner')")
    try:
        meta_model = build_from_config(cfg, device="meta")
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as e:
        raise ValueError(f"{path}: the predictor config is invalid ({type(e).__name__}: {e})") from None
    want = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if want.keys() != have.keys():
        raise ValueError(f"{path}: weights do not match the config (missing {sorted(want.keys() - have.keys())}, "
                         f"unexpected {sorted(have.keys() - want.keys())})")
    bad = [k for k in want if want[k] != have[k]]
    if bad:
        k = bad[0]
        raise ValueError(f"{path}: the config asks for {k} of shape {list(want[k])} but the file holds {list(have[k])} "
                         f"({len(bad)} tensor(s) differ); the config does not describe these weights")
