"""
L{inkflow.web.part_headers.header_params} against werkzeug's
C{parse_options_header} on the cases of test_uploads.py: the measurement
behind the module's docstring (why it is not replaced).  Should werkzeug
come to pass them all, these tests say so and the replacement can be tried.
"""

from __future__ import annotations

import pytest
from werkzeug.http import parse_options_header

from inkflow.web.part_headers import ext_value, header_params

FILENAME_STAR = 'form-data; name="files"; filename="fallback.png"; filename*=UTF-8\'\'%D7%A7%D7%95%D7%91%D7%A5.png'
BAD_FILENAME_STAR = 'form-data; name="files"; filename="fallback.png"; filename*=bogus'
WINDOWS_PATH = r'form-data; name="files"; filename="C:\Users\me\y.png"'


def test_both_decode_rfc_5987_filename_star() -> None:
    _, params = header_params(FILENAME_STAR)
    assert ext_value(params["filename*"]) == "קובץ.png"
    assert parse_options_header(FILENAME_STAR)[1]["filename"] == "קובץ.png"


def test_a_bad_filename_star_falls_back_only_here() -> None:
    _, params = header_params(BAD_FILENAME_STAR)
    assert (params["filename"], ext_value(params["filename*"])) == ("fallback.png", None)
    assert parse_options_header(BAD_FILENAME_STAR)[1]["filename"] == "bogus"


@pytest.mark.parametrize(
    "value", ['form-data; name="a"; name="b"', 'form-data; name="message', 'multipart/form-data; boundary="x']
)
def test_a_repeated_parameter_or_an_unterminated_quote_is_refused_only_here(value: str) -> None:
    with pytest.raises(ValueError):
        header_params(value)
    parse_options_header(value)  # werkzeug answers something, silently


def test_a_windows_path_keeps_its_backslashes_only_here() -> None:
    assert header_params(WINDOWS_PATH)[1]["filename"] == r"C:\Users\me\y.png"
    assert parse_options_header(WINDOWS_PATH)[1]["filename"] == "C:Usersmey.png"
