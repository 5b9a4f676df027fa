"""
L{inkflow.web.origin.check_origin}: which browsers may post.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from inkflow.errors import ApiError
from inkflow.web.origin import check_origin


class CheckOriginTests(TestCase):
    def allowed(self, origin: bytes | None, host: bytes = b"shop.example", fetch: bytes | None = None) -> bool:
        try:
            check_origin([origin] if origin else None, [fetch] if fetch else None, host, False, {"https://ok.example"})
        except ApiError as e:
            self.assertEqual((e.status, e.code), (403, "forbidden_origin"))
            return False
        return True

    def test_own_origin_with_either_scheme_and_default_ports(self) -> None:
        """The request's own host is allowed, http or https (a TLS-ending proxy), default ports made explicit."""
        self.assertTrue(self.allowed(b"http://shop.example"))
        self.assertTrue(self.allowed(b"https://shop.example"))
        self.assertTrue(self.allowed(b"https://shop.example:443"))
        self.assertTrue(self.allowed(b"http://shop.example:8000", host=b"shop.example:8000"))
        self.assertTrue(self.allowed(b"http://[::1]:8000", host=b"[::1]:8000"))

    def test_foreign_null_and_lookalike_origins_are_refused(self) -> None:
        """Another host, another port, null, and a host that merely contains ours are refused."""
        for origin in (b"https://evil.example", b"http://shop.example:8001", b"null", b"https://shop.example.evil"):
            self.assertFalse(self.allowed(origin), origin)

    def test_allow_list_and_no_origin(self) -> None:
        """A --cors-origin is allowed (any case, trailing slash); no Origin at all is allowed."""
        self.assertTrue(self.allowed(b"HTTPS://OK.example/"))
        self.assertTrue(self.allowed(None))

    def test_sec_fetch_site(self) -> None:
        """cross-site is refused even without Origin; same-site and same-origin are not judged by it."""
        self.assertFalse(self.allowed(None, fetch=b"cross-site"))
        self.assertTrue(self.allowed(None, fetch=b"same-site"))
        self.assertTrue(self.allowed(b"http://shop.example", fetch=b"same-origin"))

    def test_an_allow_listed_origin_on_another_site_may_post(self) -> None:
        """The embed on the owner's own site (another site than InkFlow's) posts cross-site, from a --cors-origin."""
        self.assertTrue(self.allowed(b"https://ok.example", fetch=b"cross-site"))
        self.assertFalse(self.allowed(b"https://evil.example", fetch=b"cross-site"))
