"""tinkerstore."""

__all__: list[str] = []
