"""indis.export: exporting samplers and models to deployable artifacts (ONNX graphs and TensorRT engines).

Lives at the repository top level (export/) and is installed only as ``indis.export``.
"""

if __name__ != "indis.export":  # imported from the checkout as the top-level `export`: its relative imports would break
    raise ImportError(f"export/ is the package indis.export (setup.py's package_dir); import indis.export, not {__name__} "
                      "(`pip install -e .` makes the checkout importable under that name)")
