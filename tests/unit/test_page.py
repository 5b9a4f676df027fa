"""
The site owner's [page] table (L{inkflow.page}) and the pages, embed and
theme rendered with it (L{inkflow.web.page}).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from inkflow.page import PageConfig, PageConfigError, contrast_ratio, page_config
from inkflow.server.workers import settings_from_env, settings_to_env
from inkflow.settings import ConfigError, Settings, load_settings
from inkflow.settings.table import load_page
from inkflow.web.page import PageFiles, page_json, theme_css
from inkflow.web.staticfiles import StaticFiles
from tests.unit.helpers import temp_path


class PageConfigTests(TestCase):
    def test_neutral_defaults(self) -> None:
        """Without a [page] table nothing names a product or shows a command line."""
        shown = json.dumps(PageConfig().public(), ensure_ascii=False)
        self.assertNotIn("InkFlow", shown)
        self.assertNotIn("twistd", shown)
        self.assertEqual(page_config(), PageConfig())

    def test_file_values_and_the_environment_over_them(self) -> None:
        page = page_config(
            {"site_name": "  מאפיית נועה ", "accent_color": "#0B6E4F", "logo": "/assets/logo.svg"},
            {"INKFLOW_PAGE_SITE_NAME": "Noa <Bakery>", "INKFLOW_WEBHOOK": "ignored here"},
        )
        self.assertEqual(page.site_name, "Noa <Bakery>")
        self.assertEqual(page.accent_color, "#0b6e4f")
        self.assertEqual(page.logo, "/assets/logo.svg")

    def test_bad_values_name_the_key(self) -> None:
        cases: list[tuple[dict[str, Any], dict[str, str], str]] = [
            ({"accent_color": "red"}, {}, "accent_color in [page]"),
            ({"accent_color": "#ffeb3b"}, {}, "too light for white text"),
            ({"logo": "javascript:alert(1)"}, {}, "logo in [page]"),
            ({"logo": 'https://x.example/a.png" onerror="x'}, {}, "no spaces, quotes"),
            ({"logo": "//evil.example/x.png"}, {}, "logo in [page]"),
            ({"site_name": ""}, {}, "must not be empty"),
            ({"site_name": 3}, {}, "expected text"),
            ({"greeting": "a\x00b"}, {}, "control characters"),
            ({"bot_name": "x" * 121}, {}, "at most 120"),
            ({"statement_email": "not-an-address"}, {}, "e-mail"),
            ({"colour": "#000000"}, {}, "unknown key 'colour' in [page]"),
            ({}, {"INKFLOW_PAGE_COLOUR": "#000"}, "INKFLOW_PAGE_COLOUR: no such [page] key"),
            ({}, {"INKFLOW_PAGE_ACCENT_COLOR": "#fff"}, "INKFLOW_PAGE_ACCENT_COLOR"),
        ]
        for table, environ, expected in cases:
            with self.assertRaises(PageConfigError, msg=repr(table)) as caught:
                page_config(table, environ)
            # The settings turn it into their one-line start-up error.
            with self.assertRaises(ConfigError):
                load_page(table, environ)
            self.assertIn(expected, str(caught.exception))

    def test_contrast(self) -> None:
        self.assertAlmostEqual(contrast_ratio("#000"), 21.0, places=1)
        self.assertGreaterEqual(contrast_ratio(PageConfig.accent_color), 4.5)


class SettingsHookTests(TestCase):
    def write(self, text: str) -> str:
        path = Path(temp_path(self) + ".toml")
        path.write_text(text, encoding="utf-8")
        return str(path)

    def test_the_page_table_beside_the_options_with_or_without_an_inkflow_table(self) -> None:
        flat = load_settings(config_file=self.write('max-files = 3\n[page]\nsite_name = "נועה"\n'))
        self.assertEqual((flat.max_files, flat.page.site_name), (3, "נועה"))
        nested = load_settings(config_file=self.write('[inkflow]\nmax-files = 2\n[page]\nbot_name = "בוט"\n'))
        self.assertEqual((nested.max_files, nested.page.bot_name), (2, "בוט"))
        from_env = load_settings(environ={"INKFLOW_PAGE_GREETING": "היי"})
        self.assertEqual(from_env.page.greeting, "היי")

    def test_a_page_that_is_not_a_table_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_settings(config_file=self.write('page = "x"\n'))
        self.assertIn("[page]", str(caught.exception))

    def test_the_page_reaches_the_workers(self) -> None:
        settings = Settings.defaults(page=PageConfig(site_name="נועה <b>", accent_color="#0b6e4f"))
        self.assertEqual(settings_from_env(settings_to_env(settings)), settings)
        self.assertEqual(settings.replace(max_files=2).page, settings.page)


class PageFilesTests(TestCase):
    def setUp(self) -> None:
        self.root = Path(temp_path(self)).resolve() / "static"
        (self.root / "assets").mkdir(parents=True)
        (self.root / "index.html").write_text(
            "<title>{{page.site_name}} · צ'אט</title>{{page.logo_html}}"
            '<script type="application/json">{{page.json}}</script>{{page.unknown}}' + "<p>שלום</p>" * 100,
            encoding="utf-8",
        )
        (self.root / "plain.html").write_text("<p>no markers</p>", encoding="utf-8")
        (self.root / "embed.js").write_text('var CONFIG = "{{page.json}}";\n', encoding="utf-8")
        (self.root / "assets" / "chat-ui.js").write_text("export const x = 1;\n", encoding="utf-8")
        self.static = StaticFiles(str(self.root))
        #: The configuration was read after the files were written (start-up).
        self.loaded = 4_000_000_000.0

    def files(self, **page: Any) -> PageFiles:
        return PageFiles(self.static, PageConfig(**page), {"mode": "demo", "max_files": 5}, loaded=self.loaded)

    def get(self, files: PageFiles, path: bytes, headers: dict[bytes, bytes] | None = None) -> tuple[Any, bytes]:
        request: Any = DummyRequest([b""])
        request.method = b"GET"
        for name, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        body = files.render(request, path)
        assert isinstance(body, bytes)
        return request, body

    def header(self, request: Any, name: bytes) -> bytes | None:
        values = request.responseHeaders.getRawHeaders(name)
        return values[0] if values else None

    def test_names_are_escaped_text_and_json_cannot_end_the_script(self) -> None:
        files = self.files(site_name='A <b>&</b> "B"', bot_name="</script><script>x()</script>")
        _, body = self.get(files, b"/")
        text = body.decode()
        self.assertIn("<title>A &lt;b&gt;&amp;&lt;/b&gt; &quot;B&quot; · צ'אט</title>", text)
        self.assertNotIn("</script><script>", text)
        self.assertIn("\\u003c/script\\u003e", text)
        self.assertIn('<span class="brand-mark" aria-hidden="true"></span>', text)
        self.assertIn("{{page.unknown}}", text)  # an unknown marker is left as it is
        logo = self.get(self.files(logo="https://cdn.example/logo.svg"), b"/")[1].decode()
        self.assertIn('<img class="brand-logo" src="https://cdn.example/logo.svg" alt=""', logo)

    def test_the_etag_follows_the_configuration_and_gives_304(self) -> None:
        first, _ = self.get(self.files(site_name="אחת"), b"/index.html")
        other, _ = self.get(self.files(site_name="שתיים"), b"/index.html")
        etag = self.header(first, b"ETag")
        assert etag is not None
        self.assertNotEqual(etag, self.header(other, b"ETag"))
        self.assertEqual(self.header(first, b"Cache-Control"), b"no-cache")
        # Last-Modified: when the configuration was read (later than the file).
        self.assertEqual(self.header(first, b"Last-Modified"), b"Tue, 02 Oct 2096 07:06:40 GMT")
        again, body = self.get(self.files(site_name="אחת"), b"/index.html", {b"If-None-Match": etag})
        self.assertEqual((again.responseCode, body), (304, b""))
        cached, body = self.get(self.files(), b"/", {b"If-Modified-Since": b"Tue, 02 Oct 2096 07:06:40 GMT"})
        self.assertEqual((cached.responseCode, body), (304, b""))
        # A copy from before the configuration was read (an older one) is sent again.
        stale, body = self.get(self.files(), b"/", {b"If-Modified-Since": b"Fri, 01 Jan 2066 00:00:00 GMT"})
        self.assertNotEqual(stale.responseCode, 304)
        self.assertTrue(body)

    def test_a_page_without_markers_is_served_as_a_file(self) -> None:
        request, body = self.get(self.files(), b"/plain.html")
        self.assertEqual(body, b"<p>no markers</p>")
        self.assertIsNotNone(self.header(request, b"Last-Modified"))

    def test_embed_gets_its_configuration_and_may_be_read_from_any_origin(self) -> None:
        request, body = self.get(self.files(bot_name="נועה <i>"), b"/embed.js")
        text = body.decode()
        self.assertTrue(text.startswith("var CONFIG = {"))
        config = json.loads(text[len("var CONFIG = ") : -2])
        self.assertEqual((config["bot_name"], config["mode"], config["max_files"]), ("נועה <i>", "demo", 5))
        self.assertEqual(self.header(request, b"Access-Control-Allow-Origin"), b"*")
        module, _ = self.get(self.files(), b"/assets/chat-ui.js")
        self.assertEqual(self.header(module, b"Access-Control-Allow-Origin"), b"*")
        page, _ = self.get(self.files(), b"/")
        self.assertIsNone(self.header(page, b"Access-Control-Allow-Origin"))

    def test_theme(self) -> None:
        self.assertNotIn("--ink-600", theme_css(PageConfig()))
        self.assertIn("--ink-600: #0b6e4f;", theme_css(PageConfig(accent_color="#0b6e4f")))
        request, body = self.get(self.files(accent_color="#0b6e4f"), b"/theme.css")
        self.assertIn(b":host", body)
        self.assertEqual(self.header(request, b"Content-Type"), b"text/css; charset=utf-8")

    def test_page_json_escapes_line_separators(self) -> None:
        self.assertNotIn("\u2028", page_json(PageConfig(), {"x": "a\u2028b"}))

    def test_missing_paths_are_left_to_the_caller(self) -> None:
        request: Any = DummyRequest([b""])
        request.method = b"GET"
        self.assertIsNone(self.files().render(request, b"/nothing.html"))


class ShippedPagesTests(TestCase):
    def test_every_marker_of_the_shipped_pages_is_known(self) -> None:
        """static/'s pages and embed.js leave no {{page.…}} marker behind and name no product."""
        static = Path(__file__).resolve().parents[2] / "static"
        files = PageFiles(StaticFiles(str(static)), PageConfig(), {"mode": "demo"})
        for name in ("index.html", "accessibility.html"):
            rendered = files.render_text((static / name).read_bytes()).decode()
            self.assertNotIn("{{page.", rendered, name)
            self.assertNotIn("twistd", rendered, name)
            self.assertNotIn("InkFlow", rendered, name)
        self.assertIn('"{{page.json}}"', (static / "embed.js").read_text(encoding="utf-8"))
