"""Reports: MLflow -> Parquet -> ablation tables, figures and an HTML page.

Never imports torch or ray. This package file stays light (studies/ imports
`vaelab.report.spec` for the schema): `build_report` and `ReportResult` are loaded from
`vaelab.report.build` on first use.

    from vaelab.report import build_report
    result = build_report("icml-table2", "sqlite:///mlflow.db")   # -> reports/icml-table2/<run name>/
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "ReportResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vaelab.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'vaelab.report' has no attribute {name!r}")
