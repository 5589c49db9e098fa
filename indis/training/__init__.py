"""INDIS training at image scale (paper sections 4.2-4.3, Algorithm 1).

  teacher   sharded, resumable, checksummed teacher datasets (seed, condition, x0*)
  train     Algorithm 1 for INDIS, GOD, LD3, AMED and the ablations (the peers' search too); checkpoints, resume,
            torch.distributed
  cli       the `indis teacher | train | eval | sample` subcommands
Training builds on inference (indis.sampling: seeds, guidance, the few-step solve), the baselines (indis.baselines)
and the distances of indis.metrics.distances; nothing below imports it.
"""
