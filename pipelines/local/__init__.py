"""The embedded runner: the training pipeline on kfp.local in a child process (runner.py,
kfp_local.py), its tasks forked from a warm task server (task_server.py, task_launcher.py)."""
