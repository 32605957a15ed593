"""The embedded mode's pure parts: scanning a models folder, the banner, argument checks, logs."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from loraplex.router.cards import LocalCardSource
from loraplex.router.resolve import classify

from loraplex.embedded.banner import banner_example, usage_lines, worker_metrics_urls
from loraplex.embedded.console import ConsoleView
from loraplex.embedded.models_dir import scan_models_dir
from loraplex.embedded.supervise import ProbeAnswer, Supervisor
from loraplex.embedded.up import (
    build_parser,
    check_args,
    check_port_free,
    child_env,
    main,
    show_progress,
    url_host,
    worker_specs,
)
from loraplex.shared.errors import NotServable
from loraplex.shared.logs import configure_logging


def repo(root: Path, repo_id: str, card: str | None, *, base: bool = False) -> None:
    folder = root / repo_id
    folder.mkdir(parents=True)
    if card is not None:
        (folder / "README.md").write_text(f"---\n{card}\n---\n")
    if base:
        (folder / "model_index.json").write_text("{}")


def test_scan_finds_bases_and_loras_by_card(tmp_path: Path) -> None:
    repo(tmp_path, "org/base", "tags: [text-to-image]", base=True)
    repo(tmp_path, "org/lora", "base_model: org/base\ntags: [lora]")
    repo(tmp_path, "org/listed", "base_model: [x/y, org/base]\ntags: [lora]")
    repo(tmp_path, "org/finetune", "base_model: org/base\ntags: [diffusers]")
    repo(tmp_path, "org/gated", "base_model: org/base\ntags: [lora]\ngated: true")
    repo(tmp_path, "org/nocard", None)
    repo(tmp_path, ".cache/x", "tags: [lora]")
    repo(tmp_path, "org/private-lora", "base_model: org/base\ntags: [lora]")
    repo(tmp_path, "My Org/x", "base_model: org/base\ntags: [lora]")  # not a repo id: skipped
    (tmp_path / ".hub-access.json").write_text('{"private": ["org/private-lora"]}')
    found = scan_models_dir(tmp_path)
    assert found.bases == ("org/base",)
    assert found.loras == {"org/listed": ("x/y", "org/base"), "org/lora": ("org/base",)}


# Cards the router routes as a LoRA without the plain `lora` tag, and cards it refuses.
ROUTER_RULE_CARDS = {
    "org/relation": "base_model: org/base\nbase_model_relation: adapter",
    "org/adapter-tag": "tags: ['base_model:adapter:org/base']",
    "org/upper": "base_model: org/base\ntags: [LoRA]",
    "org/str-tag": "base_model: org/base\ntags: lora",
    "org/no-base": "tags: [lora]",
    "org/llm": "base_model: org/base\ntags: [lora]\npipeline_tag: text-generation",
    "org/merge": "base_model: org/base\nbase_model_relation: merge",
}


def test_scan_uses_the_routers_lora_rules(tmp_path: Path) -> None:
    repo(tmp_path, "org/base", "tags: [text-to-image]", base=True)
    for repo_id, card in ROUTER_RULE_CARDS.items():
        repo(tmp_path, repo_id, card)
    assert scan_models_dir(tmp_path).loras == {
        "org/adapter-tag": ("org/base",),
        "org/relation": ("org/base",),
        "org/str-tag": ("org/base",),
        "org/upper": ("org/base",),
    }


async def test_scan_lists_exactly_what_the_router_routes_as_a_lora(tmp_path: Path) -> None:
    """The scan and the router (its LocalCardSource over the same folder) agree on every repo."""
    repo(tmp_path, "org/base", "tags: [text-to-image]", base=True)
    for repo_id, card in ROUTER_RULE_CARDS.items():
        repo(tmp_path, repo_id, card)
    repo(tmp_path, "org/lora", "base_model: org/base\ntags: [lora]")
    repo(tmp_path, "org/finetune", "base_model: org/base\ntags: [diffusers]")
    repo(tmp_path, "org/nocard", None)
    source = LocalCardSource(tmp_path)
    routed = set()
    for repo_id in ["org/lora", "org/finetune", "org/nocard", *ROUTER_RULE_CARDS]:
        try:
            route = classify(await source.fetch(repo_id, token=None), {"org/base"})
        except NotServable:
            continue
        if route.adapter is not None:
            routed.add(repo_id)
    assert set(scan_models_dir(tmp_path).loras) == routed
    assert routed == {"org/lora", "org/relation", "org/adapter-tag", "org/upper", "org/str-tag"}


def test_banner_has_copy_paste_requests() -> None:
    banner = usage_lines("http://127.0.0.1:8080", "org/base", "org/lora")
    assert banner[0].startswith("loraplex is serving on http://127.0.0.1:8080/ ")  # playground
    assert "playground" in banner[0]
    lines = "\n".join(banner)
    assert "curl -s http://127.0.0.1:8080/models/org/base -d" in lines
    assert "from huggingface_hub import InferenceClient" in lines
    assert 'InferenceClient(base_url="http://127.0.0.1:8080/models/org/lora")' in lines
    assert "curl -s http://127.0.0.1:8080/models/org/lora -d" in lines
    assert "-H 'lora: org/lora' http://127.0.0.1:8080/models/org/base" in lines
    assert "lora" not in "\n".join(usage_lines("http://h:1", "org/base", None)).replace(
        "loraplex", ""
    )


def test_the_banner_pairs_a_lora_with_its_own_base() -> None:
    """The first base (sorted) may have no LoRA; the ``lora`` header line must still name a
    LoRA *of* the base it is sent to, or the copy-paste request is a 422."""
    loras = {"o/sd-style": ("o/sd",), "o/xl-style": ("o/other", "o/xl")}
    assert banner_example(loras, ("o/flux", "o/sd", "o/xl")) == ("o/sd", "o/sd-style")
    assert banner_example(loras, ("o/flux", "o/xl")) == ("o/xl", "o/xl-style")
    assert banner_example(loras, ("o/flux",)) == ("o/flux", None)


def test_the_banner_names_each_workers_metrics_url() -> None:
    specs = worker_specs(["org/a", "org/b"], 1, {}, [])
    urls = worker_metrics_urls(specs)
    assert [name for name, _ in urls] == [s.name for v in specs.values() for s in v]
    for (_, url), spec in zip(urls, [s for v in specs.values() for s in v], strict=True):
        assert url.endswith("/metrics") and url != f"{spec.url}/metrics"  # its own port
    lines = usage_lines("http://h:1", "org/a", None, urls)
    assert sum(line.startswith("  worker metrics: ") for line in lines) == 2


def test_worker_specs_one_process_per_replica_with_shared_cpu_threads() -> None:
    specs = worker_specs(["org/a", "org/b"], 2, {"HF_ENDPOINT": "http://hub"}, ["--log-json"])
    assert {base: len(s) for base, s in specs.items()} == {"org/a": 2, "org/b": 2}
    urls = [s.ready_url for group in specs.values() for s in group]
    assert len(set(urls)) == 4 and all(str(u).endswith("/readyz") for u in urls)
    first = specs["org/a"][0]
    assert first.argv[-1] == "--log-json" and first.env["HF_ENDPOINT"] == "http://hub"
    assert int(first.env["OMP_NUM_THREADS"]) >= 1
    # The router reaches the API port; readiness is probed on the separate metrics port.
    assert first.url and first.ready_url and not first.ready_url.startswith(first.url)
    argv = list(first.argv)
    assert first.url.endswith(":" + argv[argv.index("--port") + 1])
    assert first.ready_url.endswith(":" + argv[argv.index("--metrics-port") + 1] + "/readyz")


async def test_pool_lines_until_ready_and_a_failed_pool_ends_the_wait() -> None:
    """The console loop over the workers' latest /readyz answers (no process started): it
    renders every pool, returns why once the supervisor gave up on a base, None once every
    pool serves."""

    def setup() -> tuple[Supervisor, dict, list[str], ConsoleView, Any, Any]:
        specs = worker_specs(["org/a", "org/b"], 1, {})
        supervisor = Supervisor([spec for group in specs.values() for spec in group])
        a, b = (supervisor.children[specs[base][0].name] for base in ("org/a", "org/b"))
        out: list[str] = []
        a.probe = ProbeAnswer(200, {"status": "ready", "state": "ready"})
        a.ready.set()
        return supervisor, specs, out, ConsoleView(out.append, tty=False), a, b

    supervisor, specs, out, view, _, b = setup()
    b.probe = ProbeAnswer(503, {"state": "failed", "reason": "no such base", "error": "x"})
    b.failure = "no such base"  # what the supervisor's probe reads from that answer
    assert supervisor._check_group(b)  # b's only replica failed: the base is given up
    reason = await show_progress(supervisor, specs, view)
    assert reason is not None and "no such base" in reason
    assert out == ["org/a  ready\n", "org/b  failed: org/b cannot be served: no such base\n"]

    supervisor, specs, out, view, _, b = setup()
    b.probe = ProbeAnswer(200, {"status": "ready"})
    b.ready.set()
    assert await show_progress(supervisor, specs, view) is None
    assert out[-1] == "org/b  ready\n"


def test_every_run_gives_router_and_workers_a_fresh_shared_secret() -> None:
    args = build_parser().parse_args(["--models", "."])
    env, again = child_env(args), child_env(args)
    secret = env["LORAPLEX_WORKER_SECRET"]
    assert env["LORAPLEX_ROUTER_WORKER_SECRET"] == secret and len(secret) >= 32
    assert again["LORAPLEX_WORKER_SECRET"] != secret


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "0", "--models", "."], "--replicas"),
        (["--hub"], "--base-model"),
        (["--models", "/no/such/dir"], "demo-models"),
        (["--hub", "--base-model", "../etc"], "looks like a URL or a path"),
    ],
)
def test_bad_arguments_say_what_to_do(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        check_args(parser, parser.parse_args(argv))
    text = capsys.readouterr().err
    assert message in text


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_lines=True)
    try:
        logging.getLogger("loraplex.test").info("hello %s", "world")
        logging.getLogger("httpx").info("a request line that must be muted")
    finally:
        configure_logging("WARNING")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["msg"], e["level"]) for e in lines] == [
        ("loraplex.test", "hello world", "info")
    ]


def test_url_host_brackets_ipv6_and_maps_wildcards_to_loopback() -> None:
    assert url_host("::1") == "[::1]"
    assert url_host("0.0.0.0") == "127.0.0.1" and url_host("127.0.0.1") == "127.0.0.1"


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    repo(tmp_path, "org/base", "tags: [text-to-image]", base=True)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        code = main(["--models", str(tmp_path), "--port", str(port)])
    assert code == 2 and time.monotonic() - started < 5
    assert check_port_free("127.0.0.1", port) is None  # free again once released


def test_a_port_with_only_time_wait_connections_is_free(tmp_path: Path) -> None:
    """After Ctrl-C, the last run's served connections linger in TIME_WAIT for a minute; uvicorn
    binds over them (SO_REUSEADDR), so the check must not refuse the port either."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the pair goes to TIME_WAIT
        assert client.recv(1) == b""
        client.close()
    # What the old check did, binding without SO_REUSEADDR, is refused:
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert check_port_free("127.0.0.1", port) is None
