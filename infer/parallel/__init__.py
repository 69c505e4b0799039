"""Placing parameters and page pools on a device mesh (sharding.py)."""
