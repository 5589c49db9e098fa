"""indis.export: exporting samplers and models to deployable artifacts (ONNX graphs and TensorRT engines).

Lives at the repository top level (export/) and is installed only as ``indis.export``.
"""
