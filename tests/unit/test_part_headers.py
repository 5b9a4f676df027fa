"""
L{inkflow.web.part_headers.header_params} against werkzeug's
C{parse_options_header} on the cases of test_uploads.py: the measurement
behind the module's docstring (why it is not replaced).  Should werkzeug
come to pass them all, these tests say so and the replacement can be tried.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from werkzeug.http import parse_options_header

from inkflow.web.part_headers import ext_value, header_params

FILENAME_STAR = 'form-data; name="files"; filename="fallback.png"; filename*=UTF-8\'\'%D7%A7%D7%95%D7%91%D7%A5.png'
BAD_FILENAME_STAR = 'form-data; name="files"; filename="fallback.png"; filename*=bogus'
WINDOWS_PATH = r'form-data; name="files"; filename="C:\Users\me\y.png"'


class AgainstWerkzeugTests(TestCase):
    """
    Where InkFlow's parser and werkzeug's agree, and the four cases where they do not.
    """

    def test_both_decode_rfc_5987_filename_star(self) -> None:
        _, params = header_params(FILENAME_STAR)
        self.assertEqual(ext_value(params["filename*"]), "קובץ.png")
        self.assertEqual(parse_options_header(FILENAME_STAR)[1]["filename"], "קובץ.png")

    def test_a_bad_filename_star_falls_back_only_here(self) -> None:
        _, params = header_params(BAD_FILENAME_STAR)
        self.assertEqual((params["filename"], ext_value(params["filename*"])), ("fallback.png", None))
        self.assertEqual(parse_options_header(BAD_FILENAME_STAR)[1]["filename"], "bogus")

    def test_a_repeated_parameter_or_an_unterminated_quote_is_refused_only_here(self) -> None:
        for value in ('form-data; name="a"; name="b"', 'form-data; name="message', 'multipart/form-data; boundary="x'):
            self.assertRaises(ValueError, header_params, value)
            parse_options_header(value)  # werkzeug answers something, silently

    def test_a_windows_path_keeps_its_backslashes_only_here(self) -> None:
        self.assertEqual(header_params(WINDOWS_PATH)[1]["filename"], r"C:\Users\me\y.png")
        self.assertEqual(parse_options_header(WINDOWS_PATH)[1]["filename"], "C:Usersmey.png")
