"""fedrec."""
