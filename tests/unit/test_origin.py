"""
L{inkflow.web.origin}: the one Origin rule, one table of cases, checked for
each of its three users: the chat (L{check_origin}), the C{/chat}
WebSocket (through L{judge_origin}) and the CORS headers (L{cors_headers}).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from inkflow.errors import ApiError
from inkflow.web.origin import EXPOSED_HEADERS, Verdict, check_origin, cors_headers, judge_origin, normalize_origin

LISTED = ("https://shop.example",)

NONE, OWN, LIST, CROSS, FOREIGN = Verdict.NONE, Verdict.OWN, Verdict.LISTED, Verdict.CROSS_SITE, Verdict.FOREIGN

#: Origin, Sec-Fetch-Site, Host, over TLS, verdict.
CASES: list[tuple[bytes | None, bytes | None, bytes | None, bool, Verdict]] = [
    # no Origin
    (None, None, b"site.example", False, NONE),
    (None, b"same-origin", b"site.example", False, NONE),
    (None, b"cross-site", b"site.example", False, CROSS),
    # the request's own origin, either scheme (a TLS-ending proxy), default ports either way
    (b"http://site.example", None, b"site.example", False, OWN),
    (b"https://site.example", None, b"site.example", False, OWN),
    (b"https://site.example", None, b"site.example:443", True, OWN),
    (b"http://site.example", None, b"site.example:80", False, OWN),
    (b"https://site.example:443", None, b"site.example", False, OWN),
    (b"HTTPS://Site.Example/", None, b"SITE.example", False, OWN),
    (b"http://site.example:8000", None, b"site.example:8000", False, OWN),
    (b"http://[::1]:8000", None, b"[::1]:8000", False, OWN),
    (b"https://site.example", b"same-origin", b"site.example", True, OWN),
    (b"https://site.example", b"same-site", b"site.example", True, OWN),
    # listed in --cors-origin: any case, trailing slash, default port, and cross-site (what the list is for)
    (b"https://shop.example", None, b"site.example", False, LIST),
    (b"HTTPS://SHOP.example/", None, b"site.example", False, LIST),
    (b"https://shop.example:443", None, b"site.example", False, LIST),
    (b"https://shop.example", b"cross-site", b"site.example", False, LIST),
    # refused
    (b"https://site.example", b"cross-site", b"site.example", False, CROSS),
    (b"https://evil.example", None, b"site.example", False, FOREIGN),
    (b"http://site.example:8001", None, b"site.example", False, FOREIGN),
    (b"https://site.example.evil", None, b"site.example", False, FOREIGN),
    (b"http://shop.example", None, b"site.example", False, FOREIGN),
    (b"null", None, b"site.example", False, FOREIGN),
    (b"ftp://site.example", None, b"site.example", False, FOREIGN),
    (b"chrome-extension://site.example", None, b"site.example", False, FOREIGN),
    (b"file://", None, b"site.example", False, FOREIGN),
    (b"https://user@site.example", None, b"site.example", False, FOREIGN),
    (b"https://site.example", None, None, False, FOREIGN),
]


class OriginRuleTests(TestCase):
    """
    Every case of the table, for each user of the rule.  (A trial case that
    walks the table, naming each failing case: plain pytest functions here
    would run in pytest-twisted's reactor greenlet and unsettle the trial
    cases that run the real reactor.)
    """

    def test_the_rule(self) -> None:
        """judge_origin gives each case its verdict (what the WebSocket and CORS read)."""
        wrong = [
            (case, got)
            for case in CASES
            if (got := judge_origin(case[0], case[1], case[2], case[3], LISTED)) is not case[4]
        ]
        self.assertEqual(wrong, [])

    def test_chat_agrees(self) -> None:
        """check_origin (the chat's) refuses exactly the cases the rule refuses, with 403 forbidden_origin."""
        wrong = []
        for origin, fetch, host, secure, verdict in CASES:
            try:
                check_origin([origin] if origin else None, [fetch] if fetch else None, host, secure, LISTED)
                refused = None
            except ApiError as e:
                refused = (e.status, e.code)
            if refused != (None if verdict.allowed else (403, "forbidden_origin")):
                wrong.append((origin, fetch, host, secure, verdict, refused))
        self.assertEqual(wrong, [])

    def test_cors_headers_agree(self) -> None:
        """
        cors_headers gives the CORS headers to exactly the listed cases (the
        Origin as sent), Vary: Origin to every case with an Origin, and
        nothing at all without --cors-origin.
        """
        wrong: list[tuple[object, ...]] = []
        for origin, fetch, host, secure, verdict in CASES:
            expected = {"Vary": "Origin"} if origin else {}
            if origin and verdict is LIST:
                expected["Access-Control-Allow-Origin"] = origin.decode()
                expected["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if cors_headers(origin, fetch, host, secure, LISTED) != expected:
                wrong.append((origin, fetch, host, secure, verdict))
            if cors_headers(origin, fetch, host, secure, ()) != {}:
                wrong.append((origin, fetch, host, secure, "without --cors-origin"))
        self.assertEqual(wrong, [])

    def test_normalize_origin(self) -> None:
        """Scheme, host and port; the default port made explicit; anything not http(s) is None."""
        self.assertEqual(normalize_origin("HTTPS://Shop.Example/"), "https://shop.example:443")
        self.assertEqual(normalize_origin("http://[::1]"), "http://[::1]:80")
        self.assertEqual([normalize_origin(t) for t in ("null", "ws://x", "https://", "https://x/path")], [None] * 4)
