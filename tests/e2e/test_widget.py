"""
End to end: the @n8n/chat widget's options through a real C{twistd -n
inkflow} to the fake n8n: custom input/session keys in JSON and multipart,
the CORS preflight with extra headers, forwarded headers, and a client's
C{Idempotency-Key} (three requests, two at once: one n8n request, three
equal answers).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred, gatherResults

from tests.support.fake_n8n import FakeN8n, json_reply, slow
from tests.support.server import ServerProcess, multipart
from tests.support.widget_page import widget_server_args

reactor: Any = _reactor

ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def server(fake: FakeN8n) -> Iterator[ServerProcess]:
    with ServerProcess(*widget_server_args(fake.url("/webhook/widget"), ORIGIN)) as s:
        yield s


async def post(server: ServerProcess, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> Any:
    all_headers: dict[bytes | str, bytes | str] = {"Content-Type": content_type}
    all_headers.update(headers or {})
    response = await treq.post(server.url("/api/chat"), data=body, headers=all_headers)
    return response.code, response.headers, await response.content()


@pytest_twisted.ensureDeferred
async def test_custom_keys_in_json(server: ServerProcess, fake: FakeN8n) -> None:
    """The widget's chatInputKey/chatSessionKey fields are read, and n8n gets them under the same names."""
    fake.script("/webhook/widget", json_reply({"output": "ok"}))
    before = len(fake.requests_for("/webhook/widget"))
    body = {"action": "sendMessage", "conversation": "conv-1", "question": "מה שלומך?", "metadata": {}}
    code, headers, content = await post(server, json.dumps(body).encode(), "application/json")
    assert (code, json.loads(content)) == (200, {"output": "ok"})
    assert headers.getRawHeaders("X-Session-ID") == ["conv-1"]
    [sent] = fake.requests_for("/webhook/widget")[before:]
    assert sent.json["question"] == "מה שלומך?"
    assert sent.json["conversation"] == "conv-1"
    assert "chatInput" not in sent.json and "sessionId" not in sent.json


@pytest_twisted.ensureDeferred
async def test_custom_keys_in_multipart(server: ServerProcess, fake: FakeN8n) -> None:
    """The same in multipart, with a file; n8n's multipart fields carry the custom names."""
    fake.script("/webhook/widget", json_reply({"output": "got it"}))
    before = len(fake.requests_for("/webhook/widget"))
    body, content_type = multipart(
        {"action": "sendMessage", "conversation": "conv-2", "question": "קובץ"},
        [("files", "note.txt", "text/plain", b"hello")],
    )
    code, _, content = await post(server, body, content_type)
    assert (code, json.loads(content)) == (200, {"output": "got it"})
    [sent] = fake.requests_for("/webhook/widget")[before:]
    assert (sent.fields["question"], sent.fields["conversation"]) == ("קובץ", "conv-2")
    assert [f.filename for f in sent.files] == ["note.txt"]


@pytest_twisted.ensureDeferred
async def test_preflight_allows_the_extra_headers(server: ServerProcess) -> None:
    """Cross-origin, the preflight allows Content-Type, Idempotency-Key and every --cors-allow-header."""
    preflight: dict[bytes | str, bytes | str] = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-widget-token",
    }
    response = await treq.request("OPTIONS", server.url("/api/chat"), headers=preflight)
    assert response.code == 204
    assert response.headers.getRawHeaders("Access-Control-Allow-Origin") == [ORIGIN]
    allowed = {h.strip().lower() for h in response.headers.getRawHeaders("Access-Control-Allow-Headers")[0].split(",")}
    assert {"content-type", "idempotency-key", "x-widget-token"} <= allowed


@pytest_twisted.ensureDeferred
async def test_only_named_headers_are_forwarded(server: ServerProcess, fake: FakeN8n) -> None:
    """X-Widget-Token (named by --forward-header) reaches n8n; cookies, auth and other headers do not."""
    before = len(fake.requests_for("/webhook/widget"))
    code, _, _ = await post(
        server,
        json.dumps({"question": "hi", "conversation": "c"}).encode(),
        "application/json",
        {"Origin": ORIGIN, "X-Widget-Token": "tok-1", "X-Other": "no", "Cookie": "a=b", "Authorization": "Bearer x"},
    )
    assert code == 200
    [sent] = fake.requests_for("/webhook/widget")[before:]
    assert sent.header("X-Widget-Token") == "tok-1"
    for name in ("X-Other", "Cookie", "Authorization"):
        assert sent.header(name) is None


@pytest_twisted.ensureDeferred
async def test_one_key_one_workflow_run(server: ServerProcess, fake: FakeN8n) -> None:
    """
    Three requests with one Idempotency-Key, two of them at once: n8n gets
    one request (carrying the key) and all three get the same answer.
    """
    fake.script("/webhook/widget", slow(0.5, json_reply({"output": "פעם אחת"})))
    before = len(fake.requests_for("/webhook/widget"))
    body = json.dumps({"question": "once", "conversation": "idem"}).encode()
    headers = {"Idempotency-Key": "retry-123:a"}
    together = await gatherResults([ensureDeferred(post(server, body, "application/json", headers)) for _ in range(2)])
    after = await post(server, body, "application/json", headers)
    answers = [*together, after]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert len({a[2] for a in answers}) == 1
    assert json.loads(answers[0][2]) == {"output": "פעם אחת"}
    assert sum(1 for a in answers if a[1].getRawHeaders("Idempotent-Replayed")) == 2
    sent = fake.requests_for("/webhook/widget")[before:]
    assert len(sent) == 1
    assert sent[0].header("Idempotency-Key") == "retry-123:a"


@pytest_twisted.ensureDeferred
async def test_bad_or_reused_key(server: ServerProcess) -> None:
    """A malformed key is 400 invalid_idempotency_key; one key for another message is 422."""
    body = json.dumps({"question": "x", "conversation": "c"}).encode()
    code, _, content = await post(server, body, "application/json", {"Idempotency-Key": "no spaces"})
    error = json.loads(content)["error"]
    assert (code, error["code"]) == (400, "invalid_idempotency_key")
    assert error["message"] and error["message_en"]
    await post(server, body, "application/json", {"Idempotency-Key": "k-reused"})
    other = json.dumps({"question": "y", "conversation": "c"}).encode()
    code, _, content = await post(server, other, "application/json", {"Idempotency-Key": "k-reused"})
    assert (code, json.loads(content)["error"]["code"]) == (422, "idempotency_mismatch")
