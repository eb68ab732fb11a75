"""transunet.models."""
