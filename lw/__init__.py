"""lw: LongWriter experiments from one Hydra entry point."""

__version__ = "0.1.0"
