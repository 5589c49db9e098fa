"""Files: atomic writes, safetensors with JSON metadata, and the explicit trust flag for pickles."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

META_KEY = "indis"


def _umask() -> int:
    """The process's file-creation mask: from /proc on Linux (no side effect); elsewhere os.umask, which can
    only be read by setting it (set straight back)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target. The file gets the
    mode an ordinary open() would give it (0o666 less the umask): mkstemp creates it 0600."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.chmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def save_tensors(path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict] = None) -> None:
    """safetensors file with the JSON metadata stored in its header under the key 'indis'; written atomically."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {META_KEY: json.dumps(metadata or {}, sort_keys=True, default=str)}
    atomic_write_bytes(path, save(clean, metadata=header))


def load_tensors(path, device="cpu") -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Inverse of save_tensors. A missing, truncated or foreign file gets a ValueError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers/short files
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e
    if META_KEY not in meta:
        raise ValueError(f"{path} has no INDIS metadata; it was not written by indis")
    return tensors, json.loads(meta[META_KEY])


def load_pickle(path, trust: bool = False):
    """Load a pickle only when the caller says it trusts the file: unpickling runs arbitrary code."""
    if not trust:
        raise ValueError(
            f"refusing to unpickle {path}: a pickle can run arbitrary code when loaded. "
            "Pass trust=True (CLI: --trust-pickle) only for files from a source you trust."
        )
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)
