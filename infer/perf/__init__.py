"""Performance model: the lecture's roofline (roofline.py) and hardware profiles (hardware.py)."""
