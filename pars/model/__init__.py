"""The ranker and everything that turns prompts into scores: the model and its checkpoints, tokenizing and
truncation, the padding planner, precision, inference backends and export."""
