"""transunet.data."""
