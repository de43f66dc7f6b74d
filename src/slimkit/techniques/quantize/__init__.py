"""Quantization: primitives, calibration, and PTQ for each runtime."""
