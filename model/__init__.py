"""Model core: the Multiformer and the latent Forecaster (torch only; knows nothing of fastload)."""
