"""router-ml."""
