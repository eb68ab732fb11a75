"""transunet.train."""
