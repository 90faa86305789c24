"""Baseline models (FSVAE, ANN VAE, TAID), registered into ``esvae.build_model``. Empty until the baselines land."""
