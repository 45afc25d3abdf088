"""``python -m tinkerstore`` is the ``tinkerstore`` command."""

from tinkerstore.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
