"""The error tree: one condition per class, drawn in errors.py, with the CLI's exit code."""

from __future__ import annotations

import re

import zwaif_fallback
from zwaif_fallback import errors

BAD_INPUT = {"HubFileNotFound", "InvalidSettings", "ModelNotFound", "JobNotFound", "NotStarted"}  # exit 2


def test_every_error_is_in_the_tree_and_exported():
    for name in errors.__all__:
        assert re.search(rf"^ +(?:[│ ]*[├└]── )?{name} ", errors.__doc__, re.MULTILINE), name
        assert name in zwaif_fallback.__all__, name


def test_every_error_names_its_condition_in_one_line():
    for name in errors.__all__:
        doc = getattr(errors, name).__doc__
        assert doc and "\n" not in doc.strip(), name


def test_bad_input_exits_2_and_a_failed_operation_1():
    codes = {name: getattr(errors, name).exit_code for name in errors.__all__}
    assert {name for name, code in codes.items() if code == 2} == BAD_INPUT
    assert {code for name, code in codes.items() if name not in BAD_INPUT} == {1}


def test_not_found_errors_are_lookup_errors():
    assert issubclass(errors.ModelNotFound, LookupError)
    assert issubclass(errors.JobNotFound, LookupError)
    assert issubclass(errors.HubFileNotFound, LookupError)
    assert str(errors.JobNotFound("abc")) == "no job with id 'abc'"
