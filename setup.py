"""Build script for INDIS: the Python package plus the native module ``indis._C``.

The extension is built by CMake (CMakeLists.txt) against the torch and
pybind11 that are already installed, so build WITHOUT isolation:

    pip install torch==2.13.0 pybind11 cmake ninja setuptools wheel
    pip install --no-build-isolation -e ".[test]"

Environment knobs (read at build time):
    INDIS_CUDA        0 / 1 / auto (default auto: ON iff nvcc is found on PATH
                      or in $CUDA_HOME/bin / $CUDA_PATH/bin)
    INDIS_CUDA_ARCHS  CMAKE_CUDA_ARCHITECTURES, e.g. "80;90" (default; CUDA 13
                      supports sm_75 and newer only)
    INDIS_BUILD_JOBS  parallel build jobs (default: number of CPUs)
    INDIS_TENSORRT    0 / 1 (default 0; enabled only if TensorRT is found)
    INDIS_BUILD_TYPE  Release (default) / Debug / RelWithDebInfo / MinSizeRel

The CMake build tree is kept in build/cmake-<hash of the configuration>, so
re-running the install only recompiles what changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "80;90"
BUILD_TYPES = ("Release", "Debug", "RelWithDebInfo", "MinSizeRel")
INSTALL_HINT = (
    "install torch==2.13.0 and pybind11 first, then build without isolation:\n"
    "    pip install torch==2.13.0 pybind11 cmake ninja setuptools wheel\n"
    '    pip install --no-build-isolation -e ".[test]"'
)


def read_version() -> str:
    init = ROOT / "indis" / "__init__.py"
    if init.exists():
        m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', init.read_text(), re.M)
        if m:
            return m.group(1)
    return "0.1.0"


def fail(msg: str) -> None:
    bar = "=" * 78
    sys.stderr.write(f"\n{bar}\nINDIS build error: {msg}\n{bar}\n\n")
    sys.stderr.flush()
    raise SystemExit(1)


def find_nvcc() -> str | None:
    """nvcc from $CUDA_HOME/$CUDA_PATH, else from PATH (the rule INDIS_CUDA=auto uses)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            cand = Path(home) / "bin" / "nvcc"
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return shutil.which("nvcc")


def find_tool(module: str, attr: str, exe: str) -> str | None:
    """Prefer the pip-installed cmake/ninja (the venv's bin/ may not be on PATH)."""
    try:
        mod = __import__(module)
        cand = Path(getattr(mod, attr)) / exe
        if cand.is_file():
            return str(cand)
    except Exception:
        pass
    return shutil.which(exe)


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: Path = ROOT) -> None:
        super().__init__(name, sources=[])
        self.sourcedir = str(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)

        # torch / pybind11 must come from the environment we build in.
        try:
            import torch
            import torch.utils
        except Exception as e:  # noqa: BLE001
            fail(
                f"torch is not importable in the build environment ({type(e).__name__}: {e}).\n"
                "pip's default build isolation hides already-installed packages, and torch is\n"
                "intentionally not a build requirement. Please " + INSTALL_HINT
            )
        try:
            import pybind11

            pybind11_dir = pybind11.get_cmake_dir()
        except Exception as e:  # noqa: BLE001
            # CMakeLists.txt then builds with FindPython and the pybind11 headers bundled with torch
            print(f"[indis] pybind11 is not importable ({type(e).__name__}: {e}); building with torch's bundled "
                  "pybind11 headers", flush=True)
            pybind11_dir = None

        cmake = find_tool("cmake", "CMAKE_BIN_DIR", "cmake")
        if cmake is None:
            fail("cmake was not found. Please " + INSTALL_HINT)
        ninja = find_tool("ninja", "BIN_DIR", "ninja")

        # ---- configuration from the environment --------------------------------
        cuda_mode = os.environ.get("INDIS_CUDA", "auto").strip().lower() or "auto"
        if cuda_mode not in ("0", "1", "auto"):
            fail(f"INDIS_CUDA must be 0, 1 or auto (got {cuda_mode!r})")
        nvcc = find_nvcc()
        if cuda_mode == "1" and nvcc is None:
            fail("INDIS_CUDA=1 but nvcc was not found on PATH or in $CUDA_HOME/bin; "
                 "install the CUDA toolkit, set CUDA_HOME, or use INDIS_CUDA=0.")
        with_cuda = cuda_mode == "1" or (cuda_mode == "auto" and nvcc is not None)
        archs = os.environ.get("INDIS_CUDA_ARCHS", "").strip() or DEFAULT_CUDA_ARCHS
        archs = ";".join(a for a in re.split(r"[;, ]+", archs) if a)
        trt = os.environ.get("INDIS_TENSORRT", "0").strip().lower()
        if trt not in ("0", "1"):
            fail(f"INDIS_TENSORRT must be 0 or 1 (got {trt!r})")
        build_type = os.environ.get("INDIS_BUILD_TYPE", "Release").strip() or "Release"
        if build_type not in BUILD_TYPES:
            fail(f"INDIS_BUILD_TYPE must be one of {', '.join(BUILD_TYPES)} (got {build_type!r})")
        jobs = os.environ.get("INDIS_BUILD_JOBS", "").strip() or str(os.cpu_count() or 1)
        if not jobs.isdigit() or int(jobs) < 1:
            fail(f"INDIS_BUILD_JOBS must be a positive integer (got {jobs!r})")

        config = {
            "python": sys.executable,
            "prefix": sys.prefix,
            "torch": torch.__version__,
            "torch_prefix": torch.utils.cmake_prefix_path,
            "pybind11": pybind11_dir,
            "cuda": with_cuda,
            "nvcc": nvcc if with_cuda else None,
            "archs": archs if with_cuda else None,
            "tensorrt": trt,
            "build_type": build_type,
            "generator": os.environ.get("CMAKE_GENERATOR") or ("Ninja" if ninja else None),
        }
        tag = hashlib.sha1(repr(sorted(config.items())).encode()).hexdigest()[:10]
        build_dir = ROOT / "build" / f"cmake-{tag}"
        out_dir = build_dir / "lib"
        build_dir.mkdir(parents=True, exist_ok=True)

        cmake_args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DINDIS_VERSION={self.distribution.get_version()}",
            f"-DINDIS_CUDA_MODE={cuda_mode}",
            f"-DINDIS_OUTPUT_DIR={out_dir}",
            f"-DINDIS_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DINDIS_WITH_TENSORRT={'ON' if trt == '1' else 'OFF'}",
        ]
        if pybind11_dir is not None:
            cmake_args.append(f"-Dpybind11_DIR={pybind11_dir}")
        if with_cuda:
            cmake_args += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
        if "CMAKE_GENERATOR" not in os.environ and ninja:
            cmake_args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]

        print(f"[indis] CMake build dir: {build_dir}", flush=True)
        print(f"[indis] CUDA: {'ON (' + nvcc + ', archs ' + archs + ')' if with_cuda else 'OFF'} "
              f"[INDIS_CUDA={cuda_mode}], TensorRT requested: {trt == '1'}, "
              f"build type: {build_type}, jobs: {jobs}", flush=True)
        try:
            subprocess.run([cmake, "-S", ext.sourcedir, "-B", str(build_dir), *cmake_args], check=True)
            subprocess.run([cmake, "--build", str(build_dir), "--config", build_type, "-j", jobs], check=True)
        except subprocess.CalledProcessError as e:
            fail(f"CMake step failed (exit code {e.returncode}): {' '.join(map(str, e.cmd[:4]))} ...\n"
                 "See the compiler output above (pip shows it with -v).")

        built = sorted(out_dir.glob("_C*.so")) + sorted(out_dir.glob("_C*.pyd"))
        if not built:
            fail(f"CMake finished but no _C module was found in {out_dir}")
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Always copy, with a fresh mtime: setuptools' own copy_file skips a
        # destination that looks newer, which would keep a stale in-tree _C
        # after switching configurations (e.g. INDIS_CUDA=0 -> auto).
        print(f"[indis] copying {built[-1]} -> {target}", flush=True)
        # copy beside the target, then rename over it: a process that has the old module loaded keeps its
        # (unlinked) mapping instead of reading a file that is being overwritten under it
        tmp = f"{target}.tmp{os.getpid()}"
        shutil.copyfile(built[-1], tmp)
        shutil.copymode(built[-1], tmp)
        os.replace(tmp, target)


def packages() -> list[str]:
    pkgs = find_packages(where=".", include=["indis", "indis.*"])
    # export/ and engines/ live at the repo top level but are installed (and
    # importable) only as indis.export and indis.engines.
    for top in ("export", "engines"):
        if (ROOT / top / "__init__.py").exists():
            pkgs.append(f"indis.{top}")
            pkgs += [f"indis.{top}.{p}" for p in find_packages(where=str(ROOT / top))]
    return pkgs


setup(
    name="indis",
    version=read_version(),
    description="INDIS: few-step diffusion / flow-matching sampling with instance-aware discretizations",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages(),
    package_dir={"indis.export": "export", "indis.engines": "engines"},
    # data files shipped inside the package (non-editable wheels need this)
    package_data={"indis": ["assets/*", "assets/bundled_flow/*", "assets/bundled_flow/*/*"]},
    ext_modules=[CMakeExtension("indis._C")],
    cmdclass={"build_ext": CMakeBuild},
    # torch is pinned (2.13.0) in the install instructions, not here: a pin
    # here would break environments that already ship another torch.
    # lpips is not listed: it depends on torchvision, whose PyPI build cannot load beside a CPU-only torch and
    # then breaks diffusers' model imports. INDIS only reads the linear-layer weight files that ship inside the
    # lpips package (indis/metrics/distances.py), so the install command adds it without its dependencies:
    # `pip install --no-deps lpips==0.1.4` (README.md).
    install_requires=[
        "torch>=2.4",
        "numpy",
        "safetensors",
        "tqdm",
        "matplotlib",
        "onnx",
        "onnxruntime-gpu",
        "pybind11",
        "scipy",
        "scikit-learn",
    ],
    extras_require={
        # diffusers: the adapter and the worked export example are tested with tiny random models (no download);
        # hypothesis: the fuzz tests of the native entry points (tests/test_native_fuzz.py, fixed seed).
        # transformers: diffusers' text pipelines (StableDiffusion*, Flux) import their text encoders from it.
        # Neither depends on torch or torchvision.
        "test": ["pytest", "diffusers>=0.32", "transformers>=4.47", "hypothesis"],
        "tensorrt": ["tensorrt"],
        "diffusers": ["diffusers>=0.32", "transformers>=4.47"],
    },
    entry_points={"console_scripts": ["indis = indis.cli:main"]},
    zip_safe=False,
)
