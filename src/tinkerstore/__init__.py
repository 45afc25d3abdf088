"""tinkerstore: a self-hostable, Tinker-compatible weights & checkpoints service."""

__version__ = "0.1.0"

__all__ = ["__version__"]
