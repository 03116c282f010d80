"""Training: TRL trainers configured from the Hydra config."""
