"""The native extension indis._C is built, importable and describes its build correctly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import indis
from indis import _native

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def C():
    # A missing extension is a failure here, not a skip: the build is part of the install.
    return _native.load()


@pytest.fixture(scope="module")
def info(C):
    return C.build_info()


def _nvcc_visible() -> bool:
    """The rule setup.py uses for INDIS_CUDA=auto."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.access(Path(home) / "bin" / "nvcc", os.X_OK):
            return True
    return shutil.which("nvcc") is not None


def _driver_present() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def test_native_imports(C):
    import indis._C

    assert indis._C is C
    assert _native.native_available()
    assert _native.load_error() is None


def test_version_matches_package(C):
    assert C.__version__ == indis.__version__


def test_build_info_fields(info):
    types = {
        "cuda": bool,
        "cuda_version": (str, type(None)),
        "openmp": bool,
        "openmp_threads": int,
        "tensorrt": bool,
        "torch_version": str,
        "compiler": str,
        "cuda_archs": (str, type(None)),
        "build_type": str,
        "cuda_mode": str,
    }
    for key, typ in types.items():
        assert key in info, key
        assert isinstance(info[key], typ), (key, info[key])
    assert info["openmp_threads"] >= 1
    assert info["compiler"]
    # compiled against the torch we run with (modulo the local tag, e.g. "+cpu")
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert _native.build_info() == info


def test_cuda_flag_matches_build_environment(info):
    mode = info["cuda_mode"]
    if mode == "0":
        assert info["cuda"] is False
    elif mode == "1":
        assert info["cuda"] is True
    elif mode == "auto":
        assert info["cuda"] == _nvcc_visible(), "INDIS_CUDA=auto: CUDA should be ON iff nvcc is found"
    else:
        pytest.skip(f"extension configured by hand (cuda_mode={mode!r})")
    if info["cuda"]:
        assert re.fullmatch(r"\d+\.\d+", info["cuda_version"])
        assert info["cuda_archs"]
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] is None


@pytest.mark.gpu
def test_cuda_device_count_never_raises(C, info):
    n = C.cuda_device_count()
    assert isinstance(n, int) and n >= 0
    if not info["cuda"] or not _driver_present():
        assert n == 0


def test_only_product_functions_are_exported(C, info):
    """indis._C holds the module's product (the sampler loop, build facts, native backbones); the fused updates
    are PyTorch custom operators (torch.ops.indis), and no build scaffolding or test hook is public."""
    public = {n for n in dir(C) if not n.startswith("_")}
    expected = {"build_info", "cuda_device_count", "sample_loop", "NativeBackbone"}
    if info["tensorrt"]:
        expected.add("TensorRTBackbone")
    assert public == expected, public ^ expected
    for name in ("fused_update", "fused_update_x0"):
        op = getattr(torch.ops.indis, name).default
        assert op._schema.arguments[0].alias_info.is_write  # out: Tensor(a!)
    assert "Tensor(b!) slot" in str(torch.ops.indis.fused_update_x0.default._schema)


def test_sample_loop_takes_keywords_only(C):
    """Tensors go in and out through the pybind11 casters of libtorch_python; the tables are keyword arguments."""
    x = torch.ones(2, 3, dtype=torch.float64)
    z = torch.zeros(2, 1, dtype=torch.float64)
    kw = dict(u=z + 1, w=z.unsqueeze(-1) + 0.5, p=z, q=z + 1, t_call=z + 1, orders=[1], pred_is_basis=True)
    out = C.sample_loop(lambda x, t: x, x, **kw)
    assert isinstance(out["x"], torch.Tensor) and torch.equal(out["x"], 1.5 * x)
    with pytest.raises(TypeError):
        C.sample_loop(lambda x, t: x, x, *kw.values())


def _run_outside_repo(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_installed_layout_outside_repo(tmp_path):
    """From outside the checkout: indis.export / indis.engines / indis._C import; no top-level export/engines."""
    code = f"""
        import importlib.util, os
        import indis.export, indis.engines, indis._C
        assert indis.export.__doc__ and indis.engines.__doc__
        assert indis.export.__file__.endswith(os.path.join("export", "__init__.py")), indis.export.__file__
        assert indis.engines.__file__.endswith(os.path.join("engines", "__init__.py")), indis.engines.__file__
        for top in ("export", "engines"):
            spec = importlib.util.find_spec(top)
            origin = (spec.origin or "") if spec else ""
            assert not origin.startswith({str(REPO)!r}), (top, origin)
        print("ok")
    """
    r = _run_outside_repo(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_missing_extension_does_not_break_import(tmp_path):
    code = """
        import sys
        sys.modules["indis._C"] = None  # simulate an unbuilt extension
        import indis
        from indis import _native
        assert _native.native_available() is False
        try:
            _native.load()
        except ImportError as e:
            assert "pip install --no-build-isolation -e ." in str(e), str(e)
        else:
            raise AssertionError("load() should raise ImportError")
        print("ok")
    """
    r = _run_outside_repo(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
