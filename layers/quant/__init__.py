"""Quantized weights: formats (formats.py; the quantized linear and kernels build on it)."""
