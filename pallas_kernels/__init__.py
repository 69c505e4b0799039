"""Pallas decode-attention kernels (GPU via Triton lowering, TPU via Mosaic), each beside its pure-JAX reference."""
