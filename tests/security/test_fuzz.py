"""Issue 17 item 6: the router's OpenAPI operations under hostile input — never a 5xx of its own,
always the ``{"error": "<what to do>"}`` body (on the OpenAI route OpenAI's
``{"error": {"message": "<what to do>", …}}``, which its SDK shows).

schemathesis generates the cases from the router's own ``/openapi.json`` (as in
``tests/component/router/test_router_schema.py``); each case is then sent four ways, over real
sockets (httpx, which unlike schemathesis' requests transport sends raw bytes as given):

* as generated, with non-ASCII header values added (UTF-8 bytes in ``lora``, ``accept``,
  ``x-wait-for-model`` and an unknown header): a header is latin-1 on the wire, so these reach
  the app as mojibake it must refuse or ignore, not crash on;
* with a body that is not UTF-8;
* with a body over the router's ``max_body_bytes`` (declared length, then chunked): 413.

Bodies and the header cases go to every operation (a GET with a body is still a request an
attacker can send). The router has stub workers behind one served base and a LocalCardSource
with a public and a gated LoRA (opened by one token), so token paths run too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fixtures.router_stubs import RouterThread, serve_app, stub_workers
from huggingface_hub import HfApi
from hypothesis import HealthCheck, given, settings
from loraplex.router.app import create_app
from loraplex.router.cards import HubCardSource
from loraplex.router.settings import RouterSettings

BASE = "org/base"
TOKEN = "hf_fuzz_open_token"
MAX_EXAMPLES = 12  # per operation: 2 shared cores; the variants multiply each case by four
NON_ASCII = {
    "lora": "u/styl\u00e9 \u2603",
    "accept": "image/p\u00f1g",
    "x-wait-for-model": "n\u00f6",
    "x-fuzz": "\u00fcn\u00efc\u00f8d\u00e9 \u2603 \U0001f98a",
}
NOT_UTF8 = b'{"inputs": "\xff\xfe\x80 fox", "prompt": "\xc3\x28", "model": "u/\xe9"}'


def _default_body_limit() -> int:
    """The router's own limit, whichever settings class carries it (256 KiB by default)."""
    field = RouterSettings.model_fields.get("max_body_bytes")
    return int(field.default) if field is not None else 256 * 1024


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("fuzz-cards")
    for name, extra in (("style", ""), ("gated", "")):
        (models / "u" / name).mkdir(parents=True)
        (models / "u" / name / "README.md").write_text(
            f"---\nbase_model: {BASE}\ntags: [lora]\n{extra}---\n"
        )
    (models / ".hub-access.json").write_text(json.dumps({"gated": ["u/gated"]}))
    with RouterThread(BASE, models_dir=models, models_dir_token=TOKEN) as router:
        yield router.url


def assert_answer_is_ours(resp: httpx.Response, what: str) -> None:
    """No 5xx but the documented ones, and every error is ``{"error": str}`` (OpenAI's shape,
    ``{"error": {"message": str, …}}``, on the OpenAI route)."""
    assert resp.status_code < 500 or resp.status_code in (502, 503, 504), (what, resp.text)
    if resp.status_code >= 400:
        try:
            body = resp.json()
        except json.JSONDecodeError:
            pytest.fail(f"{what}: {resp.status_code} answer is not JSON: {resp.text[:200]!r}")
        assert isinstance(body, dict), (what, body)
        error = body.get("error")
        if resp.url.path.startswith("/v1/images/"):
            assert isinstance(error, dict), (what, body)
            error = error.get("message")
        assert isinstance(error, str) and error, (what, body)


def _request(case: schemathesis.Case, base_url: str) -> tuple[str, str, dict[str, Any]]:
    """The case as (method, url, httpx keyword arguments)."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    sent: dict[str, Any] = {"params": kwargs.get("params"), "headers": dict(kwargs["headers"])}
    if "json" in kwargs:
        sent["content"] = json.dumps(kwargs["json"]).encode()
        sent["headers"]["content-type"] = "application/json"
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        sent["content"] = data if isinstance(data, bytes) else str(data).encode()
    return kwargs["method"], kwargs["url"], sent


def _variants(method: str, url: str, sent: dict[str, Any], limit: int) -> Iterator[tuple]:
    """(label, method, url, kwargs, expected status or None) for one generated case."""
    headers = {k: v for k, v in sent["headers"].items() if k.lower() != "content-length"}
    hostile = {**headers, **{k: v.encode() for k, v in NON_ASCII.items()}}
    yield "non-ascii headers", method, url, {**sent, "headers": hostile}, None
    json_type = {**headers, "content-type": "application/json"}
    yield "non-utf8 body", method, url, {**sent, "headers": json_type, "content": NOT_UTF8}, None
    big = b'{"inputs": "a fox", "pad": "' + b"x" * (limit + 1024) + b'"}'
    yield "oversized body", method, url, {**sent, "headers": json_type, "content": big}, 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    chunked = {**sent, "headers": json_type, "content": chunks()}
    yield "oversized chunked body", method, url, chunked, 413


def test_hostile_bodies_and_headers_on_every_operation(router_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{router_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/models/{model_id}", "/v1/images/generations"}
    failures: list[str] = []
    seen: Counter[tuple[str, str, int]] = Counter()
    with httpx.Client(timeout=30) as client:
        for operation in operations:
            _fuzz(operation, client, router_url, failures, seen)
    # Every failing variant, not only the first: the report says which rows are still open.
    assert not failures, "\n".join(sorted(set(failures))[:40])
    # Not vacuous: every variant reached the generation endpoints and the limit answered.
    for path in ("/models/{model_id}", "/v1/images/generations"):
        for label in ("non-ascii headers", "non-utf8 body"):
            assert sum(n for (p, v, _), n in seen.items() if (p, v) == (path, label)) >= 5
        assert seen[(path, "oversized chunked body", 413)] >= 5, seen


def _fuzz(
    operation: Any,
    client: httpx.Client,
    base_url: str,
    failures: list[str],
    seen: Counter[tuple[str, str, int]],
) -> None:
    """Generate cases for one operation; send each case's variants; collect what failed."""
    limit = _default_body_limit()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def survives(case: schemathesis.Case) -> None:
        method, url, sent = _request(case, base_url)
        for label, verb, target, kwargs, expected in _variants(method, url, sent, limit):
            what = f"{operation.method.upper()} {operation.path} [{label}]"
            resp = client.request(verb, target, **kwargs)
            seen[(operation.path, label, resp.status_code)] += 1
            try:
                assert_answer_is_ours(resp, what)
                if expected is not None and verb in ("POST", "PUT", "PATCH"):
                    assert resp.status_code == expected, (what, resp.status_code)
            except AssertionError as exc:
                failures.append(str(exc)[:300])

    survives()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("authorization", "Bearer t\u00f6k\u00e9n"),
        ("authorization", "Bearer hf_\u2603"),
        ("authorization", "B\u00e9arer hf_x"),
        ("lora", "loraplex-demo/lora-r\u2074"),
        ("lora", "\u2603/\u2603"),
    ],
)
async def test_non_ascii_header_values_through_the_hub_card_source(
    hub_server, demo_models, name: str, value: str
) -> None:
    """Cluster mode (the real client to a Hub): a token the HTTP client cannot send was a 500."""
    async with stub_workers(demo_models.base, 1) as (worker,):
        config = RouterSettings(static_pools={demo_models.base: [worker.url]})
        source = HubCardSource(HfApi(endpoint=hub_server.url), timeout_s=5)
        app = create_app(config, card_source=source)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
            model = demo_models.demo.adapters[0].repo_id if name == "authorization" else None
            target = f"/models/{model or demo_models.base}"
            resp = await client.post(
                target, json={"inputs": "a fox"}, headers={name: value.encode()}
            )
    assert_answer_is_ours(resp, f"{name}: {value!r}")
    assert resp.status_code == 400, resp.text
    assert worker.seen == []
