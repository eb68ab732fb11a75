"""transunet.report."""
