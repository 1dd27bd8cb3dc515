"""The loop no one else closes: recorded traffic -> a fine-tuned candidate -> judged against the deployed ranker on
the most recent traffic -> reloaded into the service only when it is better (pars/retrain/cycle.py)."""
