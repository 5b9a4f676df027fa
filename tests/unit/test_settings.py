"""
Tests for L{inkflow.settings}: sources, precedence, validation, redaction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from twisted.trial.unittest import TestCase

from inkflow.n8n.retry import DEFAULT_RETRY_ON
from inkflow.server.tap import Options
from inkflow.settings import (
    OPTIONS,
    OPTIONS_BY_NAME,
    ConfigError,
    Settings,
    describe,
    load_settings,
    opt,
    options_of,
    options_table_markdown,
    redact_url,
)
from inkflow.settings.parsers import int_in
from inkflow.settings.urls import RedisAddress, parse_redis_url
from tests.unit.helpers import temp_path

REPO = Path(__file__).resolve().parents[2]


class PrecedenceTests(TestCase):
    """
    Flag > environment > file > default.
    """

    def write_toml(self, text: str) -> str:
        path = temp_path(self)
        Path(path).write_text(text, encoding="utf-8")
        return path

    def test_defaults_match_the_contract(self) -> None:
        """With no source, every option has the contract's default."""
        s = load_settings()
        self.assertEqual(s.listen, "tcp:8000:interface=127.0.0.1")
        self.assertEqual((s.max_file_size, s.max_files, s.max_message_chars), (10485760, 5, 4000))
        self.assertEqual((s.max_connections, s.max_concurrent, s.queue_size), (50, 10, 20))
        self.assertEqual((s.queue_timeout, s.attempt_timeout, s.request_timeout), (30.0, 30.0, 60.0))
        self.assertEqual(s.retries, 2)
        self.assertEqual(s.retry_on, ("connect", "404", "429", "502", "503", "504"))
        self.assertEqual(s.rate_limit, 30)
        self.assertEqual((s.header_timeout, s.idle_timeout, s.drain_timeout), (10.0, 60.0, 25.0))
        self.assertEqual(s.cleanup_interval, 300.0)
        self.assertEqual(s.mode, "demo")

    def test_flag_beats_environment_beats_file(self) -> None:
        """The same option from three sources takes the flag's value, then the environment's, then the file's."""
        path = self.write_toml("max-files = 1\nqueue_size = 7\nretries = 4\n")
        env = {"INKFLOW_MAX_FILES": "2", "INKFLOW_QUEUE_SIZE": "8"}
        s = load_settings(flags={"max-files": "3"}, environ=env, config_file=path)
        self.assertEqual((s.max_files, s.queue_size, s.retries), (3, 8, 4))

    def test_config_file_named_by_environment(self) -> None:
        """INKFLOW_CONFIG names the TOML file; an [inkflow] table is accepted."""
        path = self.write_toml('[inkflow]\nwebhook = ["http://127.0.0.1:1/a", "http://127.0.0.1:2/b"]\n')
        s = load_settings(environ={"INKFLOW_CONFIG": path})
        self.assertEqual(s.webhook, ("http://127.0.0.1:1/a", "http://127.0.0.1:2/b"))
        self.assertEqual(s.mode, "proxy")

    def test_repeatable_options_from_environment_are_comma_separated(self) -> None:
        """Comma-separated environment values fill repeatable options in order."""
        s = load_settings(environ={"INKFLOW_WEBHOOK": "http://127.0.0.1:1/a, http://127.0.0.1:2/b"})
        self.assertEqual(s.webhook, ("http://127.0.0.1:1/a", "http://127.0.0.1:2/b"))

    def test_webhook_headers_keep_commas(self) -> None:
        """A header value may contain commas; several headers in the environment are one per line."""
        s = load_settings(environ={"INKFLOW_WEBHOOK_HEADER": "X-Auth: a,b\nX-Other: c"})
        self.assertEqual(s.webhook_header, (("X-Auth", "a,b"), ("X-Other", "c")))

    def test_static_only_flag_from_environment(self) -> None:
        """INKFLOW_STATIC_ONLY=true turns on static-only mode."""
        self.assertEqual(load_settings(environ={"INKFLOW_STATIC_ONLY": "true"}).mode, "static-only")


class ValidationTests(TestCase):
    """
    Invalid values stop start-up with one line naming the option.
    """

    def assertNames(self, needle: str, **kwargs: object) -> None:
        e = self.assertRaises(ConfigError, load_settings, **kwargs)
        self.assertIn(needle, str(e))
        self.assertNotIn("\n", str(e))

    def test_bad_integer_flag(self) -> None:
        """A non-integer flag names the flag."""
        self.assertNames("--max-files", flags={"max-files": "five"})

    def test_out_of_range_environment(self) -> None:
        """An out-of-range environment value names the variable."""
        self.assertNames("INKFLOW_MAX_CONNECTIONS", environ={"INKFLOW_MAX_CONNECTIONS": "0"})

    def test_bad_listen_endpoint(self) -> None:
        """An unknown endpoint type is refused."""
        self.assertNames("--listen", flags={"listen": "carrier-pigeon:1"})

    def test_bad_webhook_scheme(self) -> None:
        """Only http and https webhooks are accepted."""
        self.assertNames("--webhook", flags={"webhook": ["file:///etc/passwd"]})

    def test_bad_retry_on(self) -> None:
        """--retry-on takes only the listed outcomes."""
        self.assertNames("--retry-on", flags={"retry-on": ["connect,418"]})

    def test_cors_wildcard_refused(self) -> None:
        """A '*' CORS origin is refused: origins must be listed."""
        self.assertNames("--cors-origin", flags={"cors-origin": ["*"]})

    def test_webhook_header_value_never_in_the_error(self) -> None:
        """A malformed header is refused without echoing its (secret) value."""
        e = self.assertRaises(ConfigError, load_settings, flags={"webhook-header": ["no colon secret123"]})
        self.assertNotIn("secret123", str(e))

    def test_unknown_key_in_file(self) -> None:
        """An unknown key in the TOML file is an error, not silently ignored."""
        path = temp_path(self)
        Path(path).write_text("max_filez = 3\n", encoding="utf-8")
        self.assertNames("max_filez", config_file=path)

    def test_unreadable_file(self) -> None:
        """A config file that cannot be read names --config."""
        self.assertNames("--config", config_file="/nonexistent/inkflow.toml")

    def test_typed_overrides_are_frozen_too(self) -> None:
        """A list given for a repeatable option in code becomes a tuple, like every other source."""
        s = Settings.defaults(webhook=["http://127.0.0.1:1/a"], retry_on=[])
        self.assertEqual((s.webhook, s.retry_on), (("http://127.0.0.1:1/a",), ()))

    def test_retry_on_default_is_the_retry_policy_default(self) -> None:
        """--retry-on defaults to what the retry policy itself defaults to."""
        self.assertEqual(Settings.defaults().retry_on, DEFAULT_RETRY_ON)

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed after they are built."""
        s = Settings.defaults()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, s, "max_files", 9)


class RedactionTests(TestCase):
    """
    Secrets never show.
    """

    def test_redact_url_drops_credentials_and_query(self) -> None:
        """Credentials, query and fragment are removed; the port is explicit."""
        self.assertEqual(
            redact_url("https://user:pw@n8n.example.com/webhook/x?token=s#f"), "https://n8n.example.com:443/webhook/x"
        )

    def test_describe_hides_header_values(self) -> None:
        """describe() shows header names only."""
        s = load_settings(flags={"webhook-header": ["Authorization: Bearer hunter2"]})
        shown = describe(s)
        self.assertEqual(shown["webhook-header"], ["Authorization"])
        self.assertNotIn("hunter2", repr(shown))
        self.assertNotIn("hunter2", repr(s))


class DocumentationTests(TestCase):
    """
    The README's options table is the generated one.
    """

    def test_readme_has_the_generated_table(self) -> None:
        """The README's options table is exactly the generated one, every row in order."""
        readme = (REPO / "README.md").read_text(encoding="utf-8")
        self.assertIn(options_table_markdown() + "\n", readme)

    def test_names_are_derived_from_the_field(self) -> None:
        """A field's flag, environment variable and TOML key follow from its name."""
        option = OPTIONS_BY_NAME["max-file-size"]
        self.assertEqual((option.attr, option.env), ("max_file_size", "INKFLOW_MAX_FILE_SIZE"))
        # Every field is an option but the [page] table (inkflow.page), which is not a flag.
        self.assertEqual([o.attr for o in OPTIONS], [f.name for f in dataclasses.fields(Settings) if f.name != "page"])

    def test_help_lists_every_option_with_its_variable(self) -> None:
        """twistd's --help shows every option; single-valued ones name their variable."""
        text = str(Options())
        for option in OPTIONS:
            self.assertIn(f"--{option.name}", text)
        self.assertIn("(env: INKFLOW_MAX_FILE_SIZE)", text)

    def test_an_option_is_one_field(self) -> None:
        """A dataclass with one opt() field gets its default, parsing and repr rule from it."""

        @dataclasses.dataclass(frozen=True)
        class One:
            size: int = opt(int_in(1), 3, "a size", metavar="N")
            token: str = opt(str, "s3cret", "a secret", secret=True)

        size, token = options_of(One)
        self.assertEqual((One().size, size.parse("7"), size.help, size.env), (3, 7, "a size", "INKFLOW_SIZE"))
        self.assertNotIn("s3cret", repr(One()))
        self.assertTrue(token.secret)


class WebhookCredentialsTests(TestCase):
    """
    user:password@ in a webhook URL: refused at start, never echoed.
    """

    def test_userinfo_in_a_webhook_is_refused_at_start(self) -> None:
        """A webhook URL with user:password@ stops start-up with one line that never shows the password."""
        error = self.assertRaises(
            ConfigError, load_settings, flags={"webhook": ["http://me:hunter2@n8n.local/webhook/x"]}
        )
        self.assertIn("--webhook", str(error))
        self.assertIn("Authorization", str(error))
        self.assertNotIn("hunter2", str(error))


class EdgeOptionsTests(TestCase):
    """
    The options of the connection edge: body and write deadlines, the admin
    listener, a unix listener's proxy.
    """

    def test_defaults(self) -> None:
        """--body-timeout 10, --write-timeout 30, no admin listener."""
        s = load_settings()
        self.assertEqual((s.body_timeout, s.write_timeout, s.admin_listen), (10.0, 30.0, ""))

    def test_admin_listen_must_be_an_endpoint(self) -> None:
        """A bad --admin-listen stops start-up naming the option."""
        error = self.assertRaises(ConfigError, load_settings, flags={"admin-listen": "nonsense:1"})
        self.assertIn("--admin-listen", str(error))

    def test_admin_listen_is_not_for_several_workers(self) -> None:
        """--admin-listen with --workers 2 is refused: each worker would need its own port."""
        error = self.assertRaises(
            ConfigError, load_settings, flags={"admin-listen": "tcp:9100", "workers": "2", "listen": "tcp:8000"}
        )
        self.assertIn("--admin-listen", str(error))

    def test_trusted_proxy_unix(self) -> None:
        """--trusted-proxy takes unix next to addresses and CIDRs."""
        s = load_settings(flags={"trusted-proxy": ["unix", "10.0.0.0/8"]})
        self.assertEqual(s.trusted_proxy, ("unix", "10.0.0.0/8"))


class RedisUrlTests(TestCase):
    """
    C{--redis} and C{--redis-prefix}: L{parse_redis_url} and the options built on it.
    """

    def test_forms(self) -> None:
        """redis://, rediss:// (TLS), unix:// with a db, credentials unquoted."""
        self.assertEqual(parse_redis_url("redis://r.example:6380/2"), RedisAddress("redis", "r.example", 6380, db=2))
        tls = parse_redis_url("rediss://user:p%40ss@r.example/0")
        self.assertEqual((tls.tls, tls.username, tls.password, tls.port), (True, "user", "p@ss", 6379))
        self.assertEqual(
            parse_redis_url("unix:///run/redis.sock?db=3"), RedisAddress("unix", path="/run/redis.sock", db=3)
        )

    def test_bad_urls_are_refused(self) -> None:
        """http://, no host, a relative socket path, a db that is not a number."""
        for bad in ("http://r:1/0", "redis:///0", "unix://relative.sock", "redis://r/x", "redis://r:99999/0"):
            with self.assertRaises(ValueError, msg=bad):
                parse_redis_url(bad)

    def test_settings_check_and_redact(self) -> None:
        """--redis is checked at start-up and its password never shown; --redis-prefix has a default."""
        settings = Settings.defaults(upload_dir=temp_path(self), redis="redis://:secret@127.0.0.1:6379/1")
        self.assertEqual(settings.redis_prefix, "inkflow:")
        shown = describe(settings)
        self.assertNotIn("secret", str(shown))
        self.assertEqual(shown["redis"], "redis://:***@127.0.0.1:6379/1")
        with self.assertRaises(ConfigError) as caught:
            load_settings(flags={"redis": "http://x"}, environ={})
        self.assertIn("--redis", str(caught.exception))
        with self.assertRaises(ConfigError):
            load_settings(flags={"redis-prefix": "has space"}, environ={})
