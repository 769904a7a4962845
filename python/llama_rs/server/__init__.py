"""`llama-rs serve`: an HTTP front (front.py) over worker processes (worker.py, pool.py)."""
