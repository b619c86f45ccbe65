"""MLflow wiring, the only vaelab package that imports mlflow. Its modules, lowest first:

- `uri.py`: tracking URIs (default, absolute SQLite paths) and redaction of credentials;
- `tags.py`: the tag names, run roles and trial statuses both sides use;
- `retry.py`: which MLflow errors are transient, and retries with backoff;
- `connection.py`: an MlflowClient for a URI, and the checks that a store can be used;
- `queries.py`: lookups of trial and study runs as plain rows (`ls`, `query`, resume);
- `runs.py`: the write side: the study's parent run and one child run per trial member;
- `read.py`: the read side the report uses (typed params, histories, artifacts).

This package file imports none of them, so importing one module pulls in only what it needs.
"""
