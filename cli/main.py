"""`qrr` (export, validate, rerank, serve, rerank-batch, bench, standin) and `qrr-export`.

Every user error ends in one line on stderr and exit code 2; a failed validation gate exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from collections.abc import Sequence
from pathlib import Path

from qrr.export.presets import (
    ACCURACY_LEVELS,
    ALIASES,
    ATTENTIONS,
    BLOCK_SIZES,
    DEFAULT_MAX_DROP,
    EIGHT_BIT_PARTS,
    FORMATS,
    KERNELS,
    METHODS,
    PRECISIONS,
    PRESETS,
    PROJECTIONS,
    REFERENCE_DTYPES,
    ROUNDINGS,
    parse_eight_bit,
    parse_two_pass,
)
from qrr.export.standin import SHAPES
from qrr.runtime.bench import WORKLOADS
from qrr.runtime.errors import QrrError
from qrr.runtime.prompt import DEFAULT_MAX_LENGTH, MIN_DOCUMENT_TOKENS
from qrr.runtime.planner import DEFAULT_BATCH_TOKENS, GPU_BATCH_TOKENS

# qrr is installed from a clone (it is not on PyPI): extras are installed from the clone's folder
EXPORT_EXTRA = ("this command needs the export extra (torch, transformers, onnx): in the qrr clone run "
                "bash scripts/setup.sh, or pip install -e '.[export]' after installing the CPU build of torch")
ARTIFACT_HELP = ("an artifact folder, or the hub repo id (org/name) of a published one, downloaded into the Hugging "
                 "Face cache (needs the hub extra; HF_HUB_OFFLINE=1 uses the cache)")
SERVER_EXTRA = "qrr serve needs the server extra (FastAPI, uvicorn): in the qrr clone run pip install -e '.[server]'"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _eight_bit(text: str) -> tuple[str, ...]:
    try:
        return parse_eight_bit(text)
    except QrrError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _two_pass(text: str) -> tuple[str, ...]:
    try:
        return parse_two_pass(text)
    except QrrError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _add_reference_args(p: argparse.ArgumentParser) -> None:
    """The validation options `qrr export` and `qrr validate` share."""
    p.add_argument("--reference-dtype", choices=REFERENCE_DTYPES, default="float32",
                   help="the PyTorch reference's weights and compute: float32 (the model card's recipe) or bfloat16 "
                        "(the published dtype); a model too large for memory is streamed layer by layer "
                        "(default: float32)")
    p.add_argument("--max-pairs", type=_positive_int, default=None,
                   help="validate on the first N pairs of the data only, in data order (default: all)")


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a local checkpoint folder, or a hub id such as Qwen/Qwen3-Reranker-0.6B")
    p.add_argument("-o", "--output", required=True, type=Path, help="the artifact folder to create (must be new or empty)")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (onnxruntime: CPU, CUDA, DirectML) or openvino (Intel CPU, GPU, NPU; needs the "
                        "openvino extra) (default: onnx)")
    p.add_argument("--quant", choices=[*PRECISIONS, *ALIASES], default="fp32",
                   help="weights: fp32 (alias none), int8 / int4 = blockwise 8 / 4-bit (ONNX: MatMulNBits; OpenVINO: "
                        "NNCF, int8 per channel, int4 grouped), fp16 = fp16 body for GPUs, ONNX only (default: fp32)")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="int8/int4 only: activation-aware scales (smoothquant, awq) or plain rounding (rtn, hqq) "
                        f"(default: {PRESETS['int8'].method} for int8, {PRESETS['int4'].method} for int4)")
    p.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=None,
                   help=f"int8/int4 only: weights per scale along the input dimension (default: {PRESETS['int8'].block_size})")
    p.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS, default=None,
                   help="ONNX int8/int4 only: 0 = float activations, 4 = int8 activations and VNNI kernels "
                        "(default: per precision, README)")
    p.add_argument("--kernel", choices=KERNELS, default=None,
                   help="ONNX int8 only: rowwise = int8 activations per token on the integer GEMM (fast, scores "
                        "independent of the batch), matmulnbits = MatMulNBits blocks (default: "
                        f"{PRESETS['int8'].kernel})")
    p.add_argument("--rounding", choices=ROUNDINGS, default=None,
                   help="ONNX int8/int4: how weights meet their grid: gptq = each layer's rounding errors "
                        "compensated on the calibration pairs (slower export, same artifact size and speed), "
                        f"nearest = each weight on its own (default: {PRESETS['int8'].rounding} for int8, "
                        f"{PRESETS['int4'].rounding} for int4)")
    p.add_argument("--eight-bit", type=_eight_bit, default=None, metavar="PARTS",
                   help="int4 only: what stays at 8 bits, comma-separated from " + ",".join(EIGHT_BIT_PARTS)
                        + ", or none for 4 bits throughout (smallest, least faithful) (default: "
                        + ",".join((*PRESETS["int4"].eight_bit, "embedding")) + ")")
    p.add_argument("--two-pass", type=_two_pass, default=None, metavar="PROJECTIONS",
                   help="ONNX int8 (rowwise kernel) only: projections whose int8 activations take a second pass "
                        "over their rounding residual (about 15 bits; each costs its multiply-adds twice), "
                        "comma-separated from " + ",".join(PROJECTIONS) + ", or none (fastest) (default: "
                        + (",".join(PRESETS["int8"].two_pass) or "none") + ")")
    p.add_argument("--attention", choices=ATTENTIONS, default=None,
                   help="ONNX only: ops = standard ONNX ops, gqa = onnxruntime's GroupQueryAttention (CPU only; "
                        "faster on long documents, slower on many short ones) (default: ops)")
    p.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                   help="int8/int4 only: rotate the residual stream before quantizing, function-preserving "
                        "(default: per precision, README)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="pairs (JSON Lines) for smoothquant/awq statistics (default: the built-in set)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="build the graph one layer at a time from the safetensors files, in the memory of "
                        "about one layer (4B/8B on a 16-32 GB machine); the same graph and scores (default: stream "
                        "when the whole model would not fit in the available memory)")
    p.add_argument("--max-drop", type=_positive_float, default=None,
                   help="largest allowed |ΔP(yes)| of any evaluation pair vs the PyTorch reference (default: "
                        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_MAX_DROP.items()) + ")")
    p.add_argument("--no-validate", action="store_true", help="skip validation against the PyTorch reference")
    _add_reference_args(p)
    p.add_argument("--max-length", type=_positive_int, default=DEFAULT_MAX_LENGTH,
                   help=f"tokens per pair, prompt included; longer documents are truncated (default: {DEFAULT_MAX_LENGTH})")
    p.add_argument("--data", type=Path, default=None,
                   help="evaluation pairs as JSON Lines {query, document, label?} (default: the built-in set)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub id")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _export(args: argparse.Namespace) -> int:
    try:
        from qrr.export import ValidationError, export_onnx, export_openvino
        from qrr.export.progress import Progress
    except ImportError:
        raise QrrError(EXPORT_EXTRA) from None
    options = dict(
        quant=args.quant, max_length=args.max_length, validate=not args.no_validate, max_drop=args.max_drop,
        data=args.data, reference_dtype=args.reference_dtype, max_pairs=args.max_pairs, revision=args.revision,
        method=args.method, block_size=args.block_size, eight_bit=args.eight_bit,
        rotate=args.rotate, calibration=args.calibration, progress=Progress(enabled=not args.quiet),
    )
    if args.format == "openvino":
        for flag, value in (("--accuracy-level", args.accuracy_level), ("--kernel", args.kernel),
                            ("--rounding", args.rounding), ("--attention", args.attention),
                            ("--two-pass", args.two_pass)):
            if value is not None:
                raise QrrError(f"{flag} is an onnxruntime setting; OpenVINO artifacts do not take it")
        run = lambda: export_openvino(args.source, args.output, stream=args.stream, **options)  # noqa: E731
    else:
        run = lambda: export_onnx(args.source, args.output, accuracy_level=args.accuracy_level,  # noqa: E731
                                  kernel=args.kernel, rounding=args.rounding, stream=args.stream,
                                  two_pass=args.two_pass,
                                  attention=args.attention, **options)
    try:
        run()
    except ImportError as exc:  # torch, transformers or onnx missing or broken
        raise QrrError(f"{EXPORT_EXTRA} ({exc})") from None
    except ValidationError as exc:
        print(f"qrr: {exc} (the artifact and its validation.json are kept in {args.output})", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    try:
        from qrr.export import ValidationError, validate_artifact
        from qrr.export.progress import Progress
        from qrr.export.report import format_report
    except ImportError:
        raise QrrError(EXPORT_EXTRA) from None
    progress = Progress(enabled=not args.json)
    failed = None
    try:
        report = validate_artifact(
            args.artifact, args.reference, data=args.data, max_drop=args.max_drop, threads=args.threads,
            device=args.device, use_cache=not args.no_cache, reference_dtype=args.reference_dtype,
            max_pairs=args.max_pairs, progress=progress,
        )
    except ValidationError as exc:  # the report was written before the gate closed
        failed = exc
        report = json.loads((args.artifact / "validation.json").read_text(encoding="utf-8"))
    if args.html:
        from qrr.export.html_report import latency_by_length, write_html
        from qrr.runtime import Reranker
        from qrr.runtime.pairs import load_queries

        rr = Reranker(args.artifact, device=args.device, threads=args.threads)
        page = write_html(report, args.html, latency_by_length(rr, load_queries(args.data)))
        progress.log(f"report page written to {page}")
    if failed is not None:
        print(f"qrr: {failed}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


def read_documents(source: str) -> list[str]:
    """Documents one per line, or JSON Lines of strings / {"text": …} / {"document": …}; '-' is stdin."""
    if source == "-":
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise QrrError("standard input is not UTF-8 text") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise QrrError(f"documents file not found: {source}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise QrrError(f"{source} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].lstrip().startswith(("{", '"')):
        return lines
    docs = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QrrError(f"{source}, line {number}: the file looks like JSON Lines but this line is not JSON ({exc.msg})") from None
        if isinstance(row, dict):
            row = row.get("text", row.get("document"))
        if not isinstance(row, str):
            raise QrrError(f"{source}, line {number}: expected a JSON string or an object with a 'text' field")
        docs.append(row)
    return docs


def _rerank(args: argparse.Namespace) -> int:
    from qrr.runtime import Reranker

    docs = read_documents(args.docs)
    rr = Reranker.from_pretrained(args.artifact, args.revision, device=args.device, threads=args.threads,
                                  max_length=args.max_length)
    results = rr.rerank(args.query, docs, top_k=args.top_k, instruction=args.instruction)
    starved = [i for i, t in enumerate(rr.truncation(args.query, docs, instruction=args.instruction)) if t.starved]
    if starved:
        print(f"qrr: warning: {len(starved)} documents kept fewer than {MIN_DOCUMENT_TOKENS} of their tokens after "
              f"truncation to {rr.max_length} tokens (indices {starved[:20]}); their scores say little: shorten the "
              "query or instruction", file=sys.stderr)
    if args.json:
        rows = [{**r.__dict__, "truncated": r.index in starved} for r in results]
        print(json.dumps({"query": args.query, "results": rows}, ensure_ascii=False))
        return 0
    digits = score_digits([r.score for r in results])
    width = max(8, digits + 2)
    print(f"{'rank':>4}  {'score':>{width}}  {'index':>5}  document")
    for rank, r in enumerate(results, 1):
        flat = " ".join(r.document.split())
        print(f"{rank:>4}  {r.score:{width}.{digits}f}  {r.index:>5}  {flat[:100] + ('…' if len(flat) > 100 else '')}")
    return 0


def score_digits(scores: Sequence[float], least: int = 5) -> int:
    """Decimals enough that scores which differ print differently (at least `least`, at most 17)."""
    distinct = len(set(scores))
    for digits in range(least, 17):
        if len({f"{s:.{digits}f}" for s in scores}) == distinct:
            return digits
    return 17


def _server_config(args: argparse.Namespace):
    from qrr.server import ServerConfig

    return ServerConfig(max_documents=args.max_documents, max_in_flight=args.max_in_flight,
                        max_body_bytes=args.max_body_bytes, max_request_tokens=args.max_request_tokens,
                        timeout_s=args.timeout)


def _serve_ray(args: argparse.Namespace) -> int:
    if args.replicas and (args.min_replicas or args.max_replicas):
        raise QrrError("give --replicas N or --min-replicas A --max-replicas B, not both")
    if not Path(args.artifact).exists():
        raise QrrError(f"qrr serve --ray serves an artifact folder every node can read; {args.artifact} is not one")
    cpus = args.threads or 1
    ray = _ray(args.ray_address, None)
    from ray import serve

    from qrr.distributed.serve import build_app

    app = build_app(Path(args.artifact).resolve(), replicas=args.replicas or 1, min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas, num_cpus=cpus, name=args.name, config=_server_config(args),
                    options={"device": args.device, "max_length": args.max_length})
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name="qrr", route_prefix="/")
    print(f"qrr: serving {args.artifact} on Ray Serve ({ray.cluster_resources().get('CPU', 0):.0f} CPUs in the "
          f"cluster, {cpus} per replica) on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()


def _serve(args: argparse.Namespace) -> int:
    if args.ray:
        return _serve_ray(args)
    if args.replicas or args.min_replicas or args.max_replicas or args.ray_address:
        raise QrrError("--replicas, --min-replicas, --max-replicas and --ray-address need --ray")
    try:
        import uvicorn
        from qrr.server import create_app
    except ImportError as exc:
        raise QrrError(f"{SERVER_EXTRA} ({exc.name or exc} is missing)") from None
    from qrr.runtime import Reranker

    # a long-running server reads its weights into memory: its artifact's files may then change under it
    rr = Reranker.from_pretrained(args.artifact, args.revision, device=args.device, threads=args.threads,
                                  max_length=args.max_length, copy_weights=True)
    config = _server_config(args)
    # a hub repo is served under its id, not its cache folder's name
    name = args.name or (None if Path(args.artifact).exists() else args.artifact)
    app = create_app(rr, config, name=name)
    print(f"qrr: serving {args.artifact} ({rr.manifest['precision']}) as {name or rr.path.name} on "
          f"http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=int(config.shutdown_grace_s))
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    from qrr.runtime import Reranker
    from qrr.runtime.bench import make_workload
    from qrr.runtime.pairs import flat_pairs, load_queries
    from qrr.runtime.timing import PeakRSS, timed

    with PeakRSS() as load_mem:
        start = time.perf_counter()
        rr = Reranker(args.artifact, device=args.device, threads=args.threads, max_length=args.max_length,
                      prefix_reuse=not args.no_prefix_reuse, batch_tokens=args.batch_tokens,
                      load_cache=not args.no_load_cache)
        rr.score("warm-up", ["a first score"])
        cold = time.perf_counter() - start
    if args.data is not None:
        workloads = {"data": (str(args.data), flat_pairs(load_queries(args.data)))}
    else:
        workloads = {w: (WORKLOADS[w], make_workload(w, rr.tokenizer.count)) for w in args.workloads}
    m = rr.manifest
    rows = []
    for name, (what, pairs) in workloads.items():
        tokens = sum(map(len, rr.tokenizer.encode(pairs)))
        with PeakRSS() as mem:
            timing, _ = timed(lambda: rr.score_pairs(pairs), len(pairs), repeat=args.repeat, warmup=args.warmup)
        rows.append({"workload": name, "what": what, "pairs": len(pairs), "tokens": tokens,
                     "pairs_per_s": timing.pairs_per_s, "ms_per_pair": timing.ms_per_pair,
                     "median_s": timing.median_s, "peak_rss_mib": mem.peak_mib})
    result = {"artifact": str(args.artifact), "format": m["format"], "precision": m["precision"],
              "device": args.device, "threads": rr.threads, "prefix_reuse": rr.prefix_reuse,
              "cold_start_s": cold, "load_cache": rr.session.load_cache, "load_peak_rss_mib": load_mem.peak_mib,
              "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"{args.artifact}: {m['format']} {m['precision']} on {args.device}, {rr.threads} threads, "
          f"prefix reuse {'on' if rr.prefix_reuse else 'off'}")
    print(f"cold start (load + first score): {cold:.2f} s, peak RSS {load_mem.peak_mib:.0f} MiB, "
          f"load cache {rr.session.load_cache}")
    print(f"{'workload':<9} {'pairs':>5} {'tokens':>7} {'pairs/s':>8} {'ms/pair':>8} {'peak RSS MiB':>12}")
    for r in rows:
        print(f"{r['workload']:<9} {r['pairs']:>5} {r['tokens']:>7} {r['pairs_per_s']:>8.2f} {r['ms_per_pair']:>8.1f} "
              f"{r['peak_rss_mib']:>12.0f}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """`qrr bench A --compare B …`: each artifact benched in a fresh process, ranked, and the one to ship named."""
    import subprocess

    from qrr.runtime.manifest import load_manifest

    artifacts = [args.artifact, *args.compare]
    for artifact in artifacts:
        load_manifest(artifact)  # a missing or damaged artifact stops here, with its one-line error
    flags = ["--repeat", str(args.repeat), "--warmup", str(args.warmup), "--device", args.device, "--json"]
    flags += ["--data", str(args.data)] if args.data is not None else ["--workloads", *args.workloads]
    flags += [f"--{k.replace('_', '-')}={v}" for k, v in (("threads", args.threads), ("max_length", args.max_length),
                                                          ("batch_tokens", args.batch_tokens)) if v]
    flags += ["--no-prefix-reuse"] if args.no_prefix_reuse else []
    flags += ["--no-load-cache"] if args.no_load_cache else []
    results = []
    for artifact in artifacts:
        print(f"qrr: benchmarking {artifact} in a fresh process …", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "qrr.cli.main", "bench", str(artifact), *flags],
                              capture_output=True, text=True)
        if done.returncode:
            raise QrrError(f"benchmarking {artifact} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        result = json.loads(done.stdout)
        result["validation"] = load_manifest(artifact).get("validation")
        results.append(result)
    ranked = rank_artifacts(results)
    if args.json:
        print(json.dumps({"ranked": ranked, "recommended": ranked[0]["artifact"] if ranked[0]["shippable"] else None},
                         indent=2, ensure_ascii=False))
        return 0
    names = [r["workload"] for r in ranked[0]["rows"]]
    print(f"{'artifact':<32} {'format':<8} {'prec.':<5} {'cold s':>6} " + " ".join(f"{n + ' p/s':>9}" for n in names)
          + f" {'peak RSS MiB':>12} {'max |ΔP|':>9} {'Spearman':>8}  validation")
    for r in ranked:
        v = r["validation"] or {}
        rates = " ".join(f"{row['pairs_per_s']:>9.2f}" for row in r["rows"])
        verdict = "not validated" if not v else ("pass" if v.get("passed") else "FAIL")
        print(f"{str(r['artifact'])[-32:]:<32} {r['format']:<8} {r['precision']:<5} {r['cold_start_s']:>6.2f} {rates} "
              f"{r['peak_rss_mib']:>12.0f} {v.get('max_abs_dp', float('nan')):>9.4f} "
              f"{v.get('spearman_mean') or float('nan'):>8.4f}  {verdict}")
    best = ranked[0]
    if best["shippable"]:
        print(f"ship {best['artifact']}: the fastest here whose validation passed")
    else:
        print("no artifact here has a passed validation: validate them (qrr validate ARTIFACT --reference CKPT) first")
    return 0


def rank_artifacts(results: list[dict]) -> list[dict]:
    """Validated-and-passed artifacts first, then by speed (the geometric mean of pairs/s over the workloads)."""
    for r in results:
        rates = [row["pairs_per_s"] for row in r["rows"]]
        r["speed"] = float(np.prod(rates) ** (1 / len(rates)))
        r["peak_rss_mib"] = max([r["load_peak_rss_mib"], *(row["peak_rss_mib"] for row in r["rows"])])
        r["shippable"] = bool((r.get("validation") or {}).get("passed"))
    return sorted(results, key=lambda r: (not r["shippable"], -r["speed"]))


def _standin(args: argparse.Namespace) -> int:
    from qrr.export.progress import Progress
    from qrr.export.standin import STREAMED_SHAPES, make_standin

    if args.output.exists() and any(args.output.iterdir()):
        raise QrrError(f"output folder {args.output} exists and is not empty; choose a new folder or remove it")
    streamed = args.streamed or args.shape in STREAMED_SHAPES
    try:
        path = make_standin(args.output, shape=args.shape, tokenizer=args.tokenizer, seed=args.seed,
                            outliers=args.outliers, train_steps=args.train_steps, streamed=streamed,
                            progress=Progress())
    except ImportError as exc:  # torch or transformers missing
        raise QrrError(f"{EXPORT_EXTRA} ({exc})") from None
    weights = f"trained {args.train_steps} steps" if args.train_steps else "random weights"
    weights += ", bf16 shards written tensor by tensor" if streamed else ""
    print(f"stand-in {args.shape} checkpoint ({weights}) written to {path}", file=sys.stderr)
    return 0


def _ray(address: str | None, num_cpus: int | None = None):
    """Ray, joined to the cluster at `address` or started here; its absence is one line naming the extra."""
    from qrr.distributed import RAY_EXTRA

    try:
        import ray
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise QrrError(f"{RAY_EXTRA} ({exc.name or exc} is missing)") from None
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False)
    return ray


def _rerank_batch(args: argparse.Namespace) -> int:
    _ray(args.ray_address, args.workers * args.cpus_per_worker)
    from qrr.distributed.batch import print_progress, rerank_batch

    result = rerank_batch(args.artifact, args.input, args.output, workers=args.workers,
                          cpus_per_worker=args.cpus_per_worker, output_format=args.format, resume=args.resume,
                          part_rows=args.part_rows,
                          options={"max_length": args.max_length, "device": args.device}, progress=print_progress)
    print(f"qrr: {result['rows']} rows in {result['parts']} parts ({result['skipped']} already written, "
          f"{result['retried']} retried) -> {result['path']}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrr", description="Qwen3-Reranker, fast and faithful on CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a checkpoint to a validated artifact (same as qrr-export)")
    _add_export_args(p)
    p.set_defaults(run=_export)

    p = sub.add_parser("validate", help="compare an artifact with the PyTorch reference: accuracy and speed")
    p.add_argument("artifact", type=Path)
    p.add_argument("--reference", required=True, help="the checkpoint the artifact came from (folder or hub id)")
    p.add_argument("--data", type=Path, default=None, help="JSON Lines {query, document, label?} (default: built-in set)")
    p.add_argument("--max-drop", type=_positive_float, default=None, help="largest allowed |ΔP(yes)|")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads for both (default: physical cores)")
    p.add_argument("--device", default="cpu", help="where the artifact runs: cpu, cuda, cuda:N, dml, auto "
                   "(the reference always runs on the CPU)")
    p.add_argument("--no-cache", action="store_true",
                   help="rerun the PyTorch reference even when its scores for this checkpoint and data are cached")
    _add_reference_args(p)
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.add_argument("--html", type=Path, default=None, help="also write the report as a page with plots")
    p.set_defaults(run=_validate)

    p = sub.add_parser("rerank", help="rank documents for a query with an artifact")
    p.add_argument("artifact", help=ARTIFACT_HELP)
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a repo id")
    p.add_argument("--query", required=True)
    p.add_argument("--docs", required=True, help="a file of documents, one per line or JSON Lines; - for stdin")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--instruction", default=None, help="task instruction (default: the model card's web search one)")
    p.add_argument("--max-length", type=_positive_int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or dml (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_rerank)

    p = sub.add_parser("serve", help="serve an artifact over HTTP: /v1/rerank, /v2/rerank, /rerank (TEI), /v1/score")
    p.add_argument("artifact", help=ARTIFACT_HELP)
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a repo id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_positive_int, default=8080)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, dml or auto (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None, help="scoring threads (default: physical cores)")
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="tokens per pair with the prompt; longer documents are truncated, or 413 with truncate=false")
    p.add_argument("--max-documents", type=_positive_int, default=1000, help="documents per request (default 1000)")
    p.add_argument("--max-in-flight", type=_positive_int, default=64,
                   help="requests queued or scoring; more get 503 with Retry-After (default 64)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=4 << 20,
                   help="request body limit; larger bodies get 413 before they are read (default 4 MiB)")
    p.add_argument("--max-request-tokens", type=_positive_int, default=1 << 18,
                   help="prompt tokens per request after truncation; more get 413 (default 262144)")
    p.add_argument("--timeout", type=_positive_float, default=60.0,
                   help="seconds a request may take; then 504 and its pairs are dropped (default 60)")
    p.add_argument("--name", default=None,
                   help="the model name clients send (default: the artifact folder's name); others get 404")
    p.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve (the ray extra): replicas of the same app, each with --threads CPUs")
    p.add_argument("--replicas", type=_positive_int, default=None, help="with --ray: a fixed number of replicas")
    p.add_argument("--min-replicas", type=_positive_int, default=None,
                   help="with --ray: autoscale on queued requests between --min-replicas and --max-replicas")
    p.add_argument("--max-replicas", type=_positive_int, default=None)
    p.add_argument("--ray-address", default=None,
                   help="with --ray: a running cluster (e.g. auto); default: a local Ray instance")
    p.set_defaults(run=_serve)

    p = sub.add_parser("rerank-batch", help="score a JSON Lines or Parquet file of pairs on a pool of Ray actors")
    p.add_argument("artifact", type=Path)
    p.add_argument("--input", required=True, type=Path,
                   help='JSON Lines or Parquet: {"query", "document"} or {"query", "documents": [...]}, optional '
                        '"id" and "instruction"')
    p.add_argument("--output", required=True, type=Path, help="folder: parts/, plan.json and ranked.{parquet,jsonl}")
    p.add_argument("--format", choices=["parquet", "jsonl"], default=None, help="output format (default: the input's)")
    p.add_argument("--ray-address", default=None,
                   help="a running cluster (e.g. auto or ray://head:10001); default: a local Ray instance")
    p.add_argument("--workers", type=_positive_int, default=1, help="actors, one Reranker each (default 1)")
    p.add_argument("--cpus-per-worker", type=_positive_int, default=1, help="CPUs and scoring threads per actor")
    p.add_argument("--resume", action="store_true", help="finish an earlier run into --output: skip written parts")
    p.add_argument("--part-rows", type=_positive_int, default=256,
                   help="pairs per part, the unit of scheduling, retry and resume (whole queries; default 256)")
    p.add_argument("--max-length", type=_positive_int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, dml or auto (default: cpu)")
    p.set_defaults(run=_rerank_batch)

    p = sub.add_parser("bench", help="measure an artifact's speed and memory on this machine (workloads A, B, C)")
    p.add_argument("artifact", type=Path)
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                   help="A: 1 query x 32 docs x ~200 tokens; B: 1 x 8 x ~1000; C: 64 mixed pairs of 20-500 tokens")
    p.add_argument("--data", type=Path, default=None,
                   help='your own pairs instead, JSON Lines {"query": ..., "document": ...} or {"query", "documents"}')
    p.add_argument("--repeat", type=_positive_int, default=3, help="timed runs per workload; the best is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, dml or auto (default: cpu)")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--max-length", type=_positive_int, default=None)
    p.add_argument("--no-prefix-reuse", action="store_true", help="score every pair whole (to see what reuse saves)")
    p.add_argument("--batch-tokens", type=_positive_int, default=None,
                   help=f"padded tokens per batch: memory against speed (default {DEFAULT_BATCH_TOKENS} on a CPU, "
                        f"proportionally fewer for models wider than the 0.6B: 204 for the 4B, 128 for the 8B; "
                        f"{GPU_BATCH_TOKENS} on a GPU)")
    p.add_argument("--no-load-cache", action="store_true",
                   help="load without the load cache (README, Load time and memory), to see what it saves")
    p.add_argument("--compare", nargs="+", type=Path, default=None, metavar="ARTIFACT",
                   help="also bench these artifacts, each in a fresh process, rank them all by speed (validated ones "
                        "first) with RSS, cold start and validation figures, and say which to ship")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_bench)

    p = sub.add_parser("standin", help="write a random-weight Qwen3 checkpoint of a published shape (offline demos)")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--shape", choices=list(SHAPES), default="tiny")
    p.add_argument("--tokenizer", type=Path, default=None, help="folder with a Qwen3 tokenizer.json (default: a generated one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outliers", type=float, default=0.0,
                   help="give a few hidden channels activations this many times the rest, function-preserving "
                        "(real LLMs have ~100x outliers; 0 = none)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="first train it this many steps as a reranker on the built-in pairs, so that its scores "
                        "spread like a real reranker's (tiny/small shapes: 40-80; 0 = random weights)")
    p.add_argument("--streamed", action="store_true",
                   help="write bf16 safetensors shards tensor by tensor, never the whole model in memory (always "
                        "for 4b and 8b; random weights only)")
    p.set_defaults(run=_standin)
    return parser


def _dispatch(args: argparse.Namespace, prog: str) -> int:
    try:
        return args.run(args)
    except QrrError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _dispatch(args, "qrr")


def export_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qrr-export", description="Export a Qwen3-Reranker checkpoint to a validated artifact.")
    _add_export_args(parser)
    parser.set_defaults(run=_export)
    return _dispatch(parser.parse_args(argv), "qrr-export")


if __name__ == "__main__":
    sys.exit(main())
