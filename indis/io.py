"""Files: atomic writes, safetensors with JSON metadata, and the explicit trust flag for pickles."""
from __future__ import annotations

import hashlib
import io
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


def png_bytes(image: torch.Tensor) -> bytes:
    """A PNG of one image [C, H, W] with values in [-1, 1] (C = 1: 8-bit grayscale, C = 3: RGB), quantised as
    NVlabs/edm's generate.py does: uint8(clip(x * 127.5 + 128, 0, 255))."""
    from PIL import Image  # pillow comes with matplotlib; imported here like the plotting code

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"a PNG image must have shape [1 or 3, H, W], got {tuple(image.shape)}")
    arr = (image.detach().float().cpu() * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    (Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")).save(buf, format="png")
    return buf.getvalue()


def atomic_savefig(path, fig, **kwargs) -> None:
    """A matplotlib figure saved atomically, in the format of the path's suffix (kwargs: Figure.savefig's)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def save_safetensors(path, tensors: Dict[str, torch.Tensor], header: Optional[Dict[str, str]] = None) -> None:
    """A safetensors file with a plain header of strings (e.g. a backbone folder's model.safetensors), written
    atomically. INDIS's own files carry JSON metadata: save_tensors."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=header))


def save_tensors(path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict] = None) -> None:
    """safetensors file with the JSON metadata stored in its header under the key 'indis'; written atomically."""
    save_safetensors(path, tensors, {META_KEY: json.dumps(metadata or {}, sort_keys=True, default=str)})


def atomic_torch_save(path, obj) -> None:
    """torch.save(obj) to path, written atomically (training states)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_tensors(path, device="cpu") -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Inverse of save_tensors. A missing, truncated or foreign file gets a ValueError naming it."""
    return _read_safetensors(path, device, with_tensors=True)


def load_metadata(path) -> Dict:
    """The INDIS metadata of a file written by save_tensors, read from its header alone (no tensor is loaded)."""
    return _read_safetensors(path, "cpu", with_tensors=False)[1]


def _read_safetensors(path, device, with_tensors: bool) -> Tuple[Dict[str, torch.Tensor], Dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers/short files
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e
    if META_KEY not in meta:
        raise ValueError(f"{path} has no INDIS metadata; it was not written by indis")
    return tensors, json.loads(meta[META_KEY])


def load_prompt_table(path, what: str = "--prompt-table") -> torch.Tensor:
    """The prompt table [M, dim] (one condition row per prompt) stored as the tensor 'table' of a safetensors file."""
    tensors = load_tensors(path)[0]
    if "table" not in tensors:
        raise ValueError(f"{what} {path} holds no tensor named 'table' ([M, dim] prompt conditions, one row per "
                         f"prompt); it has {sorted(tensors)}")
    return tensors["table"]


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


# ------------------------------------------------------------------------------------------------
# Output paths and the kinds of folder INDIS writes
# ------------------------------------------------------------------------------------------------
# Each command that writes a folder marks it: a teacher dataset and an export folder by the "format" of their
# manifest.json, a training run by run.json (older runs: their checkpoint.safetensors). A command refuses a
# folder of another kind, so that no command overwrites or mixes another's files.
TEACHER, TRAINING_RUN, EXPORT = "teacher dataset", "training run", "export folder"
_MANIFEST_FORMATS = {"indis-teacher/1": TEACHER, "indis-engines": EXPORT}
RUN_MARKER, RUN_FORMAT = "run.json", "indis-train/1"


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path, what: str = "--out") -> Path:
    """Fail now, before any work, if folder `path` cannot be created or written: it is a file, a file stands
    where one of its parents should be, or the nearest existing parent is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise NotADirectoryError(f"{what} {path}: {base} is a file, so no folder can be made under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: no permission to write in {base}")
    return path


def check_writable_file(path, what: str = "--out") -> Path:
    """Fail now, before any work, if file `path` cannot be written: it is a folder, its folder cannot be
    made or written, or the file itself is read-only."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    check_writable_dir(path.parent, what=f"{what} {path}: folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path}: the file exists and is not writable")
    return path


def folder_kind(path) -> Optional[str]:
    """TEACHER, TRAINING_RUN or EXPORT for a folder INDIS marked; None for a missing or unmarked one.
    A manifest.json of another format is named by its format."""
    path = Path(path)
    if not path.is_dir():
        return None
    m = path / "manifest.json"
    if m.is_file():
        try:
            fmt = json.loads(m.read_text()).get("format")
        except (ValueError, AttributeError, OSError):
            fmt = None
        return _MANIFEST_FORMATS.get(fmt, f"folder with a foreign manifest.json (format {fmt!r})")
    if (path / RUN_MARKER).is_file() or (path / "checkpoint.safetensors").is_file():
        return TRAINING_RUN
    return None


def claim_folder(path, kind: str, command: str) -> Path:
    """Check that `indis <command>` may write its `kind` of folder at `path` (now, before any work): the path
    is a writable folder (or can be made) and holds no folder of another kind."""
    path = check_writable_dir(path)
    found = folder_kind(path)
    if found is not None and found != kind:
        a = lambda noun: ("an " if noun[0] in "aeiou" else "a ") + noun
        raise FileExistsError(f"--out {path} is {a(found)}; `indis {command}` writes {a(kind)} and would overwrite or "
                              f"mix its files. Choose another folder")
    return path
