"""One error hierarchy: every error a user can fix is a `VaelabError` from vaelab/errors.py,
so the CLI's one handler turns each into a clean message and exit status 2, and each
survives the pickling that carries it out of a Ray trial."""

from __future__ import annotations

import inspect
import pickle

import pytest

from vaelab import errors

ERROR_CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(c, BaseException) and c.__module__ == errors.__name__]


def test_every_error_of_errors_py_is_a_vaelab_error():
    assert {c.__name__ for c in ERROR_CLASSES} >= {
        "DataError", "MissingDataError", "RunnerError", "TrackingError", "StudyNotFoundError",
        "ReportError", "SpecError", "SpecErrors"}
    assert all(issubclass(c, errors.VaelabError) for c in ERROR_CLASSES)


@pytest.mark.parametrize("cls", [c for c in ERROR_CLASSES if not issubclass(c, errors.SpecError)],
                         ids=lambda c: c.__name__)
def test_an_error_pickles_with_its_type_and_message(cls):
    again = pickle.loads(pickle.dumps(cls("mnist: train-images-idx3-ubyte is missing")))
    assert type(again) is cls and str(again) == "mnist: train-images-idx3-ubyte is missing"


def test_missing_data_is_still_a_file_not_found_error():
    assert issubclass(errors.MissingDataError, FileNotFoundError)
    assert issubclass(errors.StudyNotFoundError, LookupError) and issubclass(errors.ReportError, ValueError)


def test_the_modules_that_raise_them_name_the_same_classes():
    """Exceptions Tune pickled before the classes moved keep loading by their old paths."""
    from vaelab import data
    from vaelab.report import collect
    from vaelab.studies import plan
    from vaelab.tracking import read, uri

    assert (data.DataError, data.MissingDataError) == (errors.DataError, errors.MissingDataError)
    assert plan.RunnerError is errors.RunnerError and uri.TrackingError is errors.TrackingError
    assert read.StudyNotFoundError is errors.StudyNotFoundError and collect.ReportError is errors.ReportError
