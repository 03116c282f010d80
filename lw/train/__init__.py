"""Training: TRL trainers configured from the Hydra config, one module per trainer kind (registry.py)."""

from lw.train.fit import fit_and_save

__all__ = ["fit_and_save"]
