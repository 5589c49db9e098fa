"""Convert EDM checkpoints into safetensors + JSON, and load backbones back from such a directory.

Accepted inputs:
  * EDM's training pickles (`network-snapshot-*.pkl`: a dict with the network under 'ema'). A pickle runs code
    when it is loaded, so these are read only with `trust_pickle=True` (CLI: `--trust-pickle`). EDM's pickles
    embed their class source through `torch_utils.persistence`; we do NOT execute that source: the persistent
    objects are rebuilt as inert records (class name, constructor kwargs, parameters and buffers) and the
    weights are mapped by name onto indis's own classes (edm_nets.py). Pickles of indis's own EDMPrecond /
    EDMBackbone (same dict format) load directly.
  * Plain state-dict files (`.pt`, `.pth`) read with `torch.load(weights_only=True)`: a state dict of
    EDMPrecond, optionally under a 'state_dict' / 'ema' / 'model' / 'net' key or with a 'net.' prefix. The
    architecture then comes from `preset=` or `net_kwargs=`.
  * safetensors files (the same, no code execution).

Output directory: `model.safetensors` (float32 tensors named as EDMPrecond's state dict) and `config.json`
({"format": "indis-backbone", "version": 1, "class": "EDMBackbone", "net_kwargs": ..., "t0", "T",
"backbone_id", "source"}), each written to a temporary file and moved into place with os.replace.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Dict, Optional, Tuple

import torch

from ..io import atomic_write_json, save_safetensors
from .base import check_backbone_id
from .edm import EDMBackbone, preset_kwargs
from .edm_nets import EDMPrecond

Tensor = torch.Tensor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "indis-backbone"
FORMAT_VERSION = 1


class ArchitectureMismatchError(ValueError):
    """The weights do not fit the architecture: names missing, unexpected, or with the wrong shape."""


# ------------------------------------------------------------------------------------------------
# loading weights into our classes
# ------------------------------------------------------------------------------------------------
def load_weights_strict(module: torch.nn.Module, state: Dict[str, Tensor], what: str = "checkpoint",
                        check_only: bool = False) -> None:
    """Copy `state` into `module`, raising ArchitectureMismatchError naming missing / unexpected /
    shape-mismatched keys (at most 8 of each are listed). check_only: only check (e.g. a module on 'meta')."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shape:
        def fmt(keys, extra=None):
            shown = [f"{k} {extra(k)}" if extra else k for k in keys[:8]]
            more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
            return ", ".join(shown) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {fmt(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {fmt(unexpected)}")
        if shape:
            parts.append(f"{len(shape)} shape mismatch(es): "
                         + fmt(shape, lambda k: f"(file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"))
        raise ArchitectureMismatchError(f"{what} does not match the {type(module).__name__} architecture: " + "; ".join(parts))
    if not check_only:
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


# ------------------------------------------------------------------------------------------------
# EDM pickles without executing their embedded source
# ------------------------------------------------------------------------------------------------
class PersistentRecord:
    """Inert stand-in for an object pickled by EDM's torch_utils.persistence: keeps class name and state."""

    def __init__(self, meta: Dict):
        self.class_name = meta.get("class_name")
        self.version = meta.get("version")
        state = meta.get("state") or {}
        self.state = dict(state)

    def __setstate__(self, state):  # pragma: no cover - not used (reconstruction passes meta)
        self.state = state

    @property
    def init_kwargs(self) -> Dict:
        return dict(self.state.get("_init_kwargs") or {})

    @property
    def init_args(self) -> Tuple:
        return tuple(self.state.get("_init_args") or ())

    def state_dict(self, prefix: str = "") -> Dict[str, Tensor]:
        """Parameters and persistent buffers, named as torch's Module.state_dict would name them."""
        return _collect_state(self.state, prefix)


def _collect_state(d: Dict, prefix: str) -> Dict[str, Tensor]:
    """Walk a module __dict__ (of a PersistentRecord or a plain torch module whose children may be records)."""
    out: Dict[str, Tensor] = {}
    non_persistent = set(d.get("_non_persistent_buffers_set") or ())
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in non_persistent:
            out[prefix + name] = b.detach()
    for name, m in (d.get("_modules") or {}).items():
        if m is None:
            continue
        if isinstance(m, PersistentRecord):
            out.update(_collect_state(m.state, prefix + name + "."))
        elif isinstance(m, torch.nn.Module):
            out.update(_collect_state(m.__dict__, prefix + name + "."))
        else:
            raise ValueError(f"unexpected submodule type {type(m).__name__} at {prefix + name}")
    return out


def _reconstruct_record(meta):
    return PersistentRecord(dict(meta))


class _EasyDict(dict):
    """Stand-in for dnnlib.EasyDict."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e


class _EDMUnpickler(pickle.Unpickler):
    REDIRECT = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
    }

    def find_class(self, module, name):
        if (module, name) in self.REDIRECT:
            return self.REDIRECT[(module, name)]
        return super().find_class(module, name)


def read_edm_pickle(path: str, trust_pickle: bool = False):
    """Unpickle an EDM snapshot. Refuses unless trust_pickle=True (a pickle can run arbitrary code)."""
    if not trust_pickle:
        raise ValueError(
            f"{path} is a pickle, and loading a pickle can execute arbitrary code; pass trust_pickle=True "
            "(CLI: --trust-pickle) only for files from a source you trust"
        )
    with open(path, "rb") as f:
        return _EDMUnpickler(f).load()


def _edm_kwargs_from_record(rec: PersistentRecord) -> Dict:
    if rec.class_name != "EDMPrecond":
        raise ValueError(f"the network is a {rec.class_name}; only EDMPrecond networks are supported")
    kw = dict(rec.init_kwargs)
    if rec.init_args:
        names = ["img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max", "sigma_data", "model_type"]
        kw.update(dict(zip(names, rec.init_args)))
    kw.pop("compute_dtype", None)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def _net_from_object(obj) -> Tuple[Dict, Dict[str, Tensor]]:
    """(EDMPrecond kwargs, state dict) from an unpickled network object."""
    if isinstance(obj, EDMBackbone):
        obj = obj.net
    if isinstance(obj, EDMPrecond):
        return obj.init_kwargs(), obj.state_dict()
    if isinstance(obj, PersistentRecord):
        return _edm_kwargs_from_record(obj), obj.state_dict()
    if isinstance(obj, torch.nn.Module):
        kw = getattr(obj, "init_kwargs", None)
        if kw is None:
            raise ValueError(f"cannot tell the architecture of a pickled {type(obj).__name__}")
        kw = dict(kw() if callable(kw) else kw)
        return kw, obj.state_dict()
    raise ValueError(f"expected a network object, got {type(obj).__name__}")


def _unwrap_state_dict(obj) -> Dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "ema", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError("the file does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("net.") for k in obj):
        obj = {k[4:]: v for k, v in obj.items()}
    return dict(obj)


def load_edm_checkpoint(path: str, *, trust_pickle: bool = False, preset: Optional[str] = None,
                        net_kwargs: Optional[Dict] = None, t0: float = 0.002, T: float = 80.0) -> EDMBackbone:
    """Load an EDM checkpoint (pickle, state-dict .pt, or .safetensors) into an EDMBackbone."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if preset is not None and net_kwargs is not None:
        raise ValueError("give either preset or net_kwargs, not both")
    ext = os.path.splitext(path)[1].lower()
    given_kw = preset_kwargs(preset) if preset is not None else (dict(net_kwargs) if net_kwargs else None)
    if ext in (".pkl", ".pickle"):
        data = read_edm_pickle(path, trust_pickle=trust_pickle)
        net_obj = data.get("ema") if isinstance(data, dict) else data
        if net_obj is None:
            raise ValueError(f"{path}: expected a dict with the network under 'ema' (EDM's snapshot format)")
        kw, state = _net_from_object(net_obj)
        if given_kw is not None:
            kw = given_kw
    elif ext in (".pt", ".pth", ".bin"):
        state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if given_kw is None:
            raise ValueError(f"{path} is a plain state dict: give the architecture with preset= (CLI --preset) or net_kwargs=")
        kw = given_kw
    elif ext == ".safetensors":
        from safetensors.torch import load_file

        state = _unwrap_state_dict(load_file(path))
        if given_kw is None:
            raise ValueError(f"{path} holds only weights: give the architecture with preset= (CLI --preset) or net_kwargs=")
        kw = given_kw
    else:
        raise ValueError(f"unrecognised checkpoint extension {ext!r} of {path}; expected .pkl, .pt/.pth or .safetensors")
    with torch.device("meta"):
        probe = EDMPrecond(**kw)
    load_weights_strict(probe, state, what=os.path.basename(path), check_only=True)  # raises on mismatch, cheaply (meta tensors)
    net = EDMPrecond(**kw)
    load_weights_strict(net, state, what=os.path.basename(path))
    net.eval()
    return EDMBackbone(net, t0=t0, T=T, name=os.path.splitext(os.path.basename(path))[0])


# ------------------------------------------------------------------------------------------------
# our own format: safetensors + JSON
# ------------------------------------------------------------------------------------------------
def save_backbone(backbone: EDMBackbone, out_dir: str, source: Optional[str] = None, extra: Optional[Dict] = None) -> Dict:
    """Write out_dir/model.safetensors and out_dir/config.json (atomically). Returns the config written."""
    if not isinstance(backbone, EDMBackbone):
        raise ValueError(f"save_backbone writes EDMBackbone models, got {type(backbone).__name__}")
    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.float() for k, v in backbone.net.state_dict().items()}
    cfg = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class": "EDMBackbone",
        "net_kwargs": backbone.net_kwargs(),
        "t0": backbone.process.t0,
        "T": backbone.process.T,
        "name": backbone.name,
        "backbone_id": backbone.refresh_id(),
        "source": source,
    }
    if extra:
        cfg.update(extra)
    save_safetensors(os.path.join(out_dir, WEIGHTS_NAME), state, {"format": FORMAT})
    atomic_write_json(os.path.join(out_dir, CONFIG_NAME), cfg)
    return cfg


def _is_diffusers_folder(path: str) -> bool:
    """A diffusers pipeline folder (model_index.json) or save_pretrained model folder (config.json naming a
    diffusers `_class_name`, or diffusers' weight file)."""
    if os.path.isfile(os.path.join(path, "model_index.json")) or \
            os.path.isfile(os.path.join(path, "diffusion_pytorch_model.safetensors")):
        return True
    try:
        with open(os.path.join(path, CONFIG_NAME)) as f:
            return "_class_name" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def load_backbone(path: str, compute_dtype: Optional[str] = None, check_id: bool = True,
                  weights: Optional[str] = None) -> EDMBackbone:
    """Rebuild an EDMBackbone from a directory written by save_backbone (or a config .json whose weights file
    is `weights` or sits next to it with the same stem). Verifies the recorded backbone id unless check_id=False."""
    from safetensors.torch import load_file

    if os.path.isdir(path):
        cfg_path, w_path = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
    else:
        cfg_path = path
        w_path = weights or os.path.splitext(path)[0] + ".safetensors"
    if weights is not None:
        w_path = weights
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            if os.path.isdir(path) and _is_diffusers_folder(path):
                raise FileNotFoundError(f"{path} looks like a diffusers folder, not an INDIS backbone folder; name it "
                                        f"as --backbone diffusers:{path} (DiffusersAdapter.from_pretrained)")
            raise FileNotFoundError(f"missing backbone file {p}")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("format") != FORMAT or cfg.get("class") != "EDMBackbone":
        raise ValueError(f"{cfg_path} is not an indis EDMBackbone config (format {cfg.get('format')!r}, class {cfg.get('class')!r})")
    if int(cfg.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{cfg_path} has format version {cfg['version']}, newer than this indis ({FORMAT_VERSION})")
    kw = dict(cfg["net_kwargs"])
    if compute_dtype is not None:
        kw["compute_dtype"] = compute_dtype
    net = EDMPrecond(**kw)
    load_weights_strict(net, load_file(w_path), what=os.path.basename(w_path))
    net.eval()
    bb = EDMBackbone(net, t0=cfg.get("t0", 0.002), T=cfg.get("T", 80.0), name=cfg.get("name"))
    if check_id and cfg.get("backbone_id"):
        check_backbone_id(cfg["backbone_id"], bb, f"the weights in {w_path}")
    return bb


def convert_edm(ckpt: str, out_dir: str, *, trust_pickle: bool = False, preset: Optional[str] = None,
                net_kwargs: Optional[Dict] = None) -> Dict:
    """`indis convert-edm`: load an EDM checkpoint and write safetensors + JSON to out_dir. Returns the config."""
    bb = load_edm_checkpoint(ckpt, trust_pickle=trust_pickle, preset=preset, net_kwargs=net_kwargs)
    return save_backbone(bb, out_dir, source=os.path.basename(ckpt))
