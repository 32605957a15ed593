"""``loraplex simulate``: replay traffic through the three setups and print what each costs.

Examples::

    loraplex simulate --scenario seed-blog --json
    loraplex simulate --scenario diurnal --json   # static_at_same_p95: GPU-h at equal p95
    loraplex simulate --rate 2 --adapters 5000 --zipf 1.1 --horizon 3600 --plot out/
    loraplex simulate --trace requests.csv --default-base sdxl --config pools.yaml

A preset (``--scenario``) is the starting point, then ``--config FILE`` (YAML or JSON, any
subset of :class:`~loraplex.simulate.config.SimConfig`) is merged over it, then flags win.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from loraplex.simulate.config import PRESETS, Burst, ConfigError, SimConfig, load_config
from loraplex.simulate.results import Run, format_table, simulate, sizing
from loraplex.simulate.traffic import TraceError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 10,100, got {text!r}") from exc


def _burst(text: str) -> Burst:
    try:
        start, duration, multiplier = (float(x) for x in text.split(":"))
        return Burst(start_s=start, duration_s=duration, multiplier=multiplier)
    except (ValueError, ValidationError) as exc:
        raise argparse.ArgumentTypeError(
            f"--burst wants START_S:DURATION_S:MULTIPLIER (e.g. 600:120:5), got {text!r}"
        ) from exc


def _shares(text: str) -> dict[str, float]:
    try:
        pairs = (item.split("=") for item in text.split(",") if item.strip())
        return {name.strip(): float(share) for name, share in pairs}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--base-share wants BASE=SHARE,… (e.g. sdxl=0.92,sd15=0.08), got {text!r}"
        ) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraplex simulate",
        description="Capacity planning: replay a trace or synthetic traffic through the seed's "
        "'before' and 'after' setups and through loraplex (real picker and scaling policy).",
    )
    p.add_argument("--scenario", choices=sorted(PRESETS), help="start from a preset")
    p.add_argument("--config", type=Path, help="YAML/JSON file merged over the preset")
    traffic = p.add_argument_group("traffic")
    traffic.add_argument("--trace", type=Path, help="CSV/JSONL with time,model_id[,base_model]")
    traffic.add_argument("--default-base", help="base model of trace rows without base_model")
    traffic.add_argument("--rate", type=float, help="synthetic mean request rate, req/s")
    traffic.add_argument("--adapters", type=int, help="synthetic number of LoRA adapters")
    traffic.add_argument("--zipf", type=float, help="Zipf exponent of adapter popularity")
    traffic.add_argument("--base-share", type=_shares, help="e.g. sdxl=0.92,sd15=0.08")
    traffic.add_argument("--diurnal-amplitude", type=float, help="0 (flat) … <1")
    traffic.add_argument("--burst", type=_burst, action="append", help="START:DURATION:MULT")
    traffic.add_argument("--horizon", type=float, help="measured simulated seconds")
    traffic.add_argument("--warmup", type=float, help="seconds simulated before measuring")
    traffic.add_argument("--seed", type=int, help="random seed (same seed → same figures)")
    fleet = p.add_argument_group("fleet")
    fleet.add_argument(
        "--rate-window",
        type=float,
        metavar="S",
        help="seconds of counter history the operator's rate averages over (default: the "
        "operator's own, LORAPLEX_OPERATOR_RATE_WINDOW_S)",
    )
    fleet.add_argument("--slots", type=int, help="loraplex: adapters resident per GPU")
    fleet.add_argument(
        "--target-per-replica", type=float, metavar="RPS", help="loraplex: req/s per replica"
    )
    fleet.add_argument("--max-replicas", type=int, help="loraplex: most replicas per pool")
    fleet.add_argument("--before-idle-stop", type=float, metavar="S", help="'before' scale-down")
    fleet.add_argument(
        "--after-picker", choices=["round_robin", "least_loaded"], help="'after' pool's picker"
    )
    fleet.add_argument(
        "--static-search",
        action="store_true",
        help="also find the smallest static loraplex pool per base meeting the p95 "
        "(static_at_same_p95 in the JSON)",
    )
    fleet.add_argument(
        "--target-p95", type=float, metavar="S", help="that p95 (default: loraplex's own)"
    )
    out = p.add_argument_group("output")
    out.add_argument("--sizing", type=_floats, help="traffic multipliers for the sizing table")
    out.add_argument("--no-sizing", action="store_true", help="skip the sizing table")
    out.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    out.add_argument("--plot", type=Path, metavar="DIR", help="write PNG figures into DIR")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    cfg = PRESETS[args.scenario] if args.scenario else SimConfig()
    if args.config is not None:
        cfg = load_config(args.config, cfg)
    synthetic = {
        "rate_per_s": args.rate,
        "adapters": args.adapters,
        "zipf_exponent": args.zipf,
        "base_share": args.base_share,
        "diurnal_amplitude": args.diurnal_amplitude,
        "bursts": tuple(args.burst) if args.burst else None,
    }
    traffic = {
        "trace": args.trace,
        "default_base": args.default_base,
        "horizon_s": args.horizon,
        "warmup_s": args.warmup,
        "seed": args.seed,
    }
    data = cfg.model_dump()
    data["traffic"].update({k: v for k, v in traffic.items() if v is not None})
    data["traffic"]["synthetic"].update({k: v for k, v in synthetic.items() if v is not None})
    knobs = {
        "rate_window_s": args.rate_window,
        "before_idle_stop_s": args.before_idle_stop,
        "after_picker": args.after_picker,
        "static_search": True if args.static_search else None,
        "static_target_p95_s": args.target_p95,
    }
    data["scenarios"].update({k: v for k, v in knobs.items() if v is not None})
    scaling = {"target_requests_per_replica": args.target_per_replica}
    scaling["max_replicas"] = args.max_replicas
    for pool in [data["default_pool"], *data["pools"].values()]:
        if args.slots is not None:
            pool["adapter_slots"] = args.slots
        pool["scaling"].update({k: v for k, v in scaling.items() if v is not None})
    if args.sizing is not None:
        data["sizing_multipliers"] = args.sizing
    if args.no_sizing:
        data["sizing_multipliers"] = ()
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid option:\n{exc}") from exc


def run(cfg: SimConfig, scenario: str | None) -> tuple[dict, Run]:
    result = simulate(cfg)
    figures = {"scenario": scenario or "custom", "seed": cfg.traffic.seed, **result.figures}
    if cfg.sizing_multipliers:
        figures["sizing"] = sizing(cfg, cfg.sizing_multipliers)
    return figures, result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_from_args(args)
        figures, result = run(cfg, args.scenario)
    except (ConfigError, TraceError) as exc:
        print(f"loraplex simulate: error: {exc}", file=sys.stderr)
        return 2
    if args.plot is not None:
        from loraplex.simulate.plots import write_plots  # matplotlib only when asked

        for path in write_plots(result, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        print(format_table(figures))
    return 0
