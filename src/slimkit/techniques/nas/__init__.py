"""Student architecture search (see technique.py)."""
