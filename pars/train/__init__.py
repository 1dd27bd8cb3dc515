"""Training: the loop (loop.py, read top to bottom), its data as token tables, batches, losses, the full
training state for exact resume, and torchrun/DDP helpers."""
