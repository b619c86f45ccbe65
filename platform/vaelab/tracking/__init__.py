"""MLflow wiring: `write.py` (runs, params, metrics, artifacts) and `read.py` (the read side).

These two modules are the only ones in vaelab that import mlflow. This package file imports
neither, so `import vaelab.tracking.read` does not pull in the write side (and vice versa).
"""
