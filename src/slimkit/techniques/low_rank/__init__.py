"""Low-rank factorisation: Linear layers by truncated SVD, convolutions by Tucker-2.

`factorise` holds the math (pure functions on one layer), `scan` the calibration statistics,
the per-layer sensitivity scan and the rank allocation, `technique` the registered step.
"""
