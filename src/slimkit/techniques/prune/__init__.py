"""Structured pruning: parts of a network removed, leaving a smaller dense model."""
