"""INDIS training at image scale (paper sections 4.2-4.3, Algorithm 1).

  seeds     per-sample generators: x_T and the condition regenerated bit-exactly from one integer seed
  teacher   sharded, resumable, checksummed teacher datasets (seed, condition, x0*)
  losses    distances d: mse, l1, pseudo-huber, LPIPS (without torchvision)
  train     Algorithm 1 for INDIS, GOD, LD3 and the ablations; checkpoints, resume, torch.distributed
  ld3       LD3's global schedule with decoupled shifts and the soft x_T ball
  cli       the `indis teacher | train | eval | sample` subcommands
"""
