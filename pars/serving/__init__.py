"""Stage 3: the HTTP predictor service (FastAPI)."""
