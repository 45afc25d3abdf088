"""The ``tinkerstore`` command line (see ``tinkerstore --help``)."""

from tinkerstore.cli import maintenance as maintenance  # registers verify/sweep
from tinkerstore.cli import serve as serve  # registers `serve` on the group
from tinkerstore.cli.main import main

__all__ = ["main"]
