"""`flywheel run`: the closed loop on one machine (run.py tells it; guards.py, traffic.py and
store.py are its parts)."""
