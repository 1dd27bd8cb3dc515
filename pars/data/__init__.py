"""Stage 1: load a dataset, normalize rows to (prompt, answer, answer_length), make pairs."""
