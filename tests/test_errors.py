"""The error tree: one condition per class, drawn in errors.py, with the CLI's exit code."""

from __future__ import annotations

import re
import socket

import pytest

import zwaif_fallback
from zwaif_fallback import errors
from zwaif_fallback.server import listen

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


def test_model_not_found_lists_usable_models_and_only_counts_broken_ones():
    message = str(errors.ModelNotFound("nosuch", ["good", "smol"], broken=["aaa-broken", "abc-bad"]))
    assert message == ("no model named 'nosuch'; known models: good, smol "
                       "(2 broken models not listed; see why with: zwaif-fallback models)")


def test_model_not_found_with_only_broken_models_says_none_is_usable():
    message = str(errors.ModelNotFound("nosuch", [], broken=["abc-bad"]))
    assert message == ("no model named 'nosuch'; no usable model was discovered "
                       "(1 broken model not listed; see why with: zwaif-fallback models)")


def test_model_not_found_for_a_path_says_no_file_is_there():
    message = str(errors.ModelNotFound("models/missing", ["good"], path=True))
    assert message == ("no file at 'models/missing', and no model has that name: check the path; "
                       "known models: good (list them with: zwaif-fallback models)")


@pytest.mark.parametrize(("host", "port", "error", "advice"), [
    ("127.0.0.1", 99999, errors.InvalidSettings, "use 0 to 65535"),  # bind: OverflowError
    ("127.0.0.1", -1, errors.InvalidSettings, "use 0 to 65535"),
    ("999.1.1.1", 0, errors.HostUnavailable, "--host 127.0.0.1"),  # socket.gaierror
    ("192.0.2.1", 0, errors.HostUnavailable, "--host 127.0.0.1"),  # EADDRNOTAVAIL (TEST-NET-1)
    ("127.0.0.1", "taken", errors.PortUnavailable, "choose another port"),  # EADDRINUSE
])
def test_listen_translates_every_failure_to_bind(host, port, error, advice):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if port == "taken":
            port = taken.getsockname()[1]
        with pytest.raises(error, match=re.escape(advice)):
            listen(host, port).close()
