"""Sample-quality metrics.

  distances  per-sample distances d(x0, x0*): mse, l1, pseudo-huber, LPIPS (without torchvision)
  fid        Fréchet distance and the digits feature network
  inception  the Inception-v3 feature extractor of FID
"""
