"""Generation on top of the step: static batches (batch.py), speculative decoding (speculative.py with the
exact acceptance rule in speculative_accept.py), text in and out (text.py)."""
