"""indis.engines: runtimes that execute exported artifacts (ONNX Runtime sessions, TensorRT engines).

Lives at the repository top level (engines/) and is installed only as ``indis.engines``.
"""

if __name__ != "indis.engines":  # imported from the checkout as the top-level `engines`: its relative imports would break
    raise ImportError(f"engines/ is the package indis.engines (setup.py's package_dir); import indis.engines, not {__name__} "
                      "(`pip install -e .` makes the checkout importable under that name)")
