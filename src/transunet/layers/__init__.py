"""transunet.layers."""
