"""indis.engines: runtimes that execute exported artifacts (ONNX Runtime sessions, TensorRT engines).

Lives at the repository top level (engines/) and is installed only as ``indis.engines``.
"""
