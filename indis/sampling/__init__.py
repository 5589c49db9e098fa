"""Inference: everything between a seed and a sample, with nothing of training in it.

  seeds     per-sample generators: x_T and the condition regenerated bit-exactly from one integer seed
  guidance  classifier-free guidance as a backbone wrapper (GuidedBackbone)
  fixed     heuristic schedules with the predictor interface (FixedDiscretization, heuristic)
  solve     the few-step solve of a discretization model (predictor, global schedule or peer)
  load      load_predictor: rebuilds any saved discretization model from predictor.safetensors
"""
