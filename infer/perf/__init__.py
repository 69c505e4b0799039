"""Performance model: the lecture's roofline (roofline.py), hardware profiles (hardware.py), and the programs
XLA builds for a GPU or TPU, compiled on this machine without one (aot_target.py, thunks.py, gpu_program.py)."""
