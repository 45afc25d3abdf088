"""tinkerstore."""
