"""``shrinkscope`` command line: analyze, compare, report, demo.

A thin layer over ``shrinkscope.analyze`` / ``compare`` and ``shrinkscope.report``. Bad input of any kind
exits with status 2 and one line on stderr (no traceback); success exits 0; Ctrl-C exits 130 with one line
and leaves no half-written report (``shrinkscope.output``).

Examples::

    shrinkscope analyze vqgan.ckpt
    shrinkscope analyze tokenizer.pt --latents encoder_outputs.npy --out report/
    shrinkscope analyze model.safetensors --json > health.json
    shrinkscope compare before.pt after.pt --latents z.npy --out compare/
    shrinkscope report runs/train.jsonl --out timeline/
    shrinkscope demo --quick
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import warnings
from typing import Any, Sequence

from .output import OutputError, Terminated, check_out, printable, terminate_cleanly, write_atomically

__all__ = ["build_parser", "main"]

EPILOG_ANALYZE = """examples:
  shrinkscope analyze vqgan.ckpt
  shrinkscope analyze tokenizer.pt --latents z.npy --out report/
  shrinkscope analyze model.safetensors --key quantizer.codebook --json
  PYTHONPATH=src shrinkscope analyze run.ckpt --model mytok.models:build_tokenizer --data val.npy
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2), like every other input error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"shrinkscope: error: {printable(message)} (see '{self.prog} --help')\n")
        sys.exit(2)


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _device(text: str) -> str:
    """``--device``: a device torch knows and this machine has, checked before the model is built."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected e.g. cpu, cuda, cuda:1") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available here (torch "
                                         f"{torch.__version__}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu or cuda")
    return text


def _scale_list(text: str) -> list[Any]:
    """``--scales 1,2,4`` or ``1x1,2x3``: token-map sizes, coarse to fine."""
    out: list[Any] = []
    for part in text.split(","):
        try:
            hw = [int(v) for v in part.strip().lower().split("x")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected sizes such as 1,2,4 or 1x1,2x2, got {text!r}") from None
        if len(hw) not in (1, 2) or min(hw) < 1:
            raise argparse.ArgumentTypeError(f"each size is N or HxW with N, H, W >= 1, got {part!r}")
        out.append(hw[0] if len(hw) == 1 else tuple(hw))
    return out


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace a report already in --out")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--latents",
        metavar="FILE",
        help="pre-quantization encoder outputs (.npy/.npz/.pt/.safetensors; "
        "N x D or channel-first maps): enables spread ratio, coverage, quantization error",
    )
    p.add_argument(
        "--labels", metavar="FILE",
        help="data-mode ids of the latents (.npy/.pt of ints, one per --latents row or per map): "
        "enables the mode-level metrics token_mode_entropy and shrunk_mode_share",
    )
    p.add_argument(
        "--out", metavar="DIR", help="write report.html (self-contained), the PNGs and health.json here"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    p.add_argument(
        "--trust-checkpoint", action="store_true",
        help="allow unsafe unpickling (runs code stored in the file): only for files you trust"
    )
    p.add_argument(
        "--key", action="append", metavar="KEY",
        help="codebook tensor key (repeatable); skips automatic discovery"
    )
    p.add_argument(
        "--include-embeddings", action="store_true",
        help="also report token-embedding tables of language models (skipped by default)"
    )
    p.add_argument(
        "--l2-normalize", action=argparse.BooleanOptionalAction, default=None,
        help="force / forbid l2-normalising codebooks (default: follow the library convention)"
    )
    p.add_argument(
        "--max-latents", type=_at_least(1), default=20_000, metavar="N",
        help="random subset of latents used per codebook (default: 20000)"
    )
    p.add_argument(
        "--max-points", type=_at_least(2), default=4096, metavar="N",
        help="pairwise spreads exact up to N rows, estimated from N random rows above (default: 4096)"
    )
    p.add_argument(
        "--umap", action="store_true",
        help="also draw UMAP projections in --out (seconds per codebook; numba compiles on first use)"
    )
    p.add_argument(
        "--no-umap", action="store_true", help="no effect: UMAP is off unless --umap (kept for old scripts)"
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bars on stderr (default: on a terminal, once the work takes over a second)"
    )
    p.add_argument("--seed", type=_at_least(0), default=0, help="seed of every subsample (default: 0)")
    p.add_argument(
        "--scales", type=_scale_list, default=None, metavar="N,N,...",
        help="token-map sizes of a multi-scale quantizer, coarse to fine (e.g. 1,2,3,4,5,6,8,10,13,16): label "
        "a VAR checkpoint's per-scale rows (it stores no sizes); with --model, split your own quantizer by scale"
    )
    _force(p)


def _kwargs(args: argparse.Namespace) -> dict:
    if args.trust_checkpoint:
        print(
            "shrinkscope: warning: --trust-checkpoint: unpickling may run code stored in the file",
            file=sys.stderr,
        )
    return dict(
        latents=args.latents, labels=args.labels, keys=args.key, trust_checkpoint=args.trust_checkpoint,
        include_embeddings=args.include_embeddings, l2_normalize=args.l2_normalize,
        max_latents=args.max_latents, max_points=args.max_points, seed=args.seed, progress=args.progress,
        scales=args.scales
    )


def _emit(result: Any, args: argparse.Namespace, text: Any, write_report: Any) -> int:
    """Print a result as JSON or as text, then write its report folder when ``--out`` is given."""
    if args.json:
        print(json.dumps(result.to_dict()))  # ensure_ascii: control characters in names arrive escaped
    else:
        print(printable(text(result)))
    if args.out:
        path = write_atomically(
            lambda tmp: write_report(result, tmp, umap=args.umap, progress=args.progress, seed=args.seed),
            args.out, force=args.force
        )
        print(f"report: {printable(path)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze
    from .report import analysis_text, write_analysis_report

    if args.model or args.data:
        rank, joined = _join_torchrun(args)
        try:
            result = _live(args)
            # under torchrun every rank ran its shard and holds the same result: rank 0 alone prints and writes
            return _emit(result, args, analysis_text, write_analysis_report) if rank == 0 else 0
        finally:
            if joined:
                import torch.distributed as dist

                dist.destroy_process_group()
    return _emit(analyze(args.checkpoint, **_kwargs(args)), args, analysis_text, write_analysis_report)


def _join_torchrun(args: argparse.Namespace) -> tuple[int, bool]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment): join the process group (gloo, or NCCL for
    ``--device cuda``, each rank on its ``LOCAL_RANK`` GPU). Returns ``(rank, whether we joined it here)``."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or not (args.model and args.data):
        return 0, False
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), False
    cuda = bool(args.device) and str(args.device).startswith("cuda")
    if cuda and str(args.device) == "cuda" and "LOCAL_RANK" in os.environ:
        args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), True


def _shard(x: Any) -> Any:
    """This rank's contiguous block of rows under torch.distributed (all rows otherwise)."""
    import torch.distributed as dist

    if x is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return x
    return x.tensor_split(dist.get_world_size())[dist.get_rank()]


def _live(args: argparse.Namespace) -> Any:
    """``--model`` + ``--data``: build the user's model, load the checkpoint into it, run the data."""
    from . import live
    from .latents import load_labels

    if not (args.model and args.data):
        raise ValueError("--model and --data go together: --model package.module:factory --data FILE")
    if args.latents or args.key:
        raise ValueError("--latents/--key do not apply with --model: the latents come from running the model")
    if args.trust_checkpoint:
        print("shrinkscope: warning: --trust-checkpoint: unpickling may run code stored in the file",
              file=sys.stderr)
    model = live.build_model(args.model)
    if args.device:
        model.to(args.device)
    note = live.load_weights(model, args.checkpoint, trust=args.trust_checkpoint)
    data = live.load_data(args.data)
    labels = load_labels(args.labels)
    if labels is not None and labels.reshape(-1).numel() != data.shape[0]:
        raise ValueError(f"--labels: {labels.numel()} labels for {data.shape[0]} rows of --data; with --model pass "
                         "one mode id per input row")
    result = live.analyze_model(
        model, _shard(data), batch_size=args.batch_size, max_batches=args.max_batches, device=args.device,
        max_latents=args.max_latents, max_points=args.max_points, seed=args.seed, source=args.checkpoint,
        labels=None if labels is None else _shard(labels.reshape(-1)), scales=args.scales
    )
    for e in result.entries:
        e.notes.insert(0, note)
    result.latents_source = f"live: {args.model} on {args.data}"
    return result


def _cmd_compare(args: argparse.Namespace) -> int:
    from .analyze import compare
    from .report import comparison_text, write_comparison_report

    kw = _kwargs(args)
    result = compare(args.before, args.after, latents=kw.pop("latents"), **kw)
    return _emit(result, args, comparison_text, write_comparison_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .formats import regular_file
    from .report import read_timeline, timeline_text, write_timeline_report

    check_out(args.out, force=args.force)
    regular_file(args.run, hint="pass the JSONL file written by shrinkscope.watch(log_to=...)")
    tl = read_timeline(args.run)
    print(printable(timeline_text(tl)))
    path = write_atomically(lambda tmp: write_timeline_report(tl, tmp), args.out, force=args.force)
    print(f"report: {printable(path)}")
    return 0


def _demo_module() -> tuple[object | None, str | None]:
    """Import shrinkscope.reference.demo lazily: a broken reference module must never break analyze."""
    try:
        demo = importlib.import_module("shrinkscope.reference.demo")
    except Exception as exc:  # noqa: BLE001 - any import failure becomes a one-line error
        return None, f"the demo is unavailable ({type(exc).__name__}: {' '.join(str(exc).split())})"
    return demo, None


def _add_demo(sub: argparse._SubParsersAction, demo: object | None) -> None:
    """Register ``demo`` with the reference module's own ``add_arguments`` / ``main`` when it is loaded."""
    help_ = "train the bundled reference tokenizer with and without deferred quantization and compare"
    p = sub.add_parser("demo", help=help_, description=help_)
    if demo is not None:
        demo.add_arguments(p)
        p.set_defaults(func=demo.main)


def build_parser(demo: object | None = None) -> argparse.ArgumentParser:
    """The argparse parser; ``demo`` is the loaded shrinkscope.reference.demo module, if any."""
    from . import __version__

    parser = _Parser(
        prog="shrinkscope", description="Diagnose codebook shrinkage in VQ tokenizers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run 'shrinkscope COMMAND --help' for the options of a command"
    )
    parser.add_argument("--version", action="version", version=f"shrinkscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "analyze",
        help="diagnose every codebook in a checkpoint",
        epilog=EPILOG_ANALYZE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find every codebook in a checkpoint (.pt/.pth/.ckpt/.bin/.safetensors/.npy/.npz) "
        "and measure its health: spread, effective rank, usage, coverage.",
    )
    p.add_argument("checkpoint", help="checkpoint file")
    _common(p)
    live = p.add_argument_group(
        "live model (runs YOUR code)",
        "--model imports your module and calls its factory: an explicit opt-in to run that code (the "
        "checkpoint itself is still loaded safely, without unpickling code). The weights are loaded strictly "
        "into the model, which then runs in eval mode without gradients over --data; usage is counted "
        "exactly over every batch and latents are sampled (at most --max-latents per codebook). --labels "
        "then gives one mode id per --data row. Under torchrun each rank runs its own block of --data; the "
        "counts and latents are merged over the ranks and rank 0 prints and writes."
    )
    live.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                      help="import PKG.MODULE and call FACTORY() to build the model (its folder must be on "
                      "PYTHONPATH or be the current directory)")
    live.add_argument("--data", metavar="FILE",
                      help="model inputs, one float array (N, ...): .npy, .npz (one array or one named 'data'), "
                      ".pt (a tensor, loaded with weights_only) or .safetensors")
    live.add_argument("--batch-size", type=_at_least(1), default=64, metavar="N",
                      help="rows per forward (default: 64)")
    live.add_argument("--max-batches", type=_at_least(1), default=None, metavar="N",
                      help="stop after N batches (default: all)")
    live.add_argument("--device", type=_device, default=None,
                      help="where to run the model, e.g. cuda (default: cpu)")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "compare", help="compare the codebooks of two checkpoints",
        description="Analyse BEFORE and AFTER with the same latents; print deltas (after - before)."
    )
    p.add_argument("before")
    p.add_argument("after")
    _common(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "report",
        help="timeline plots from a shrinkscope.watch JSONL log",
        description="Plot every metric against the training step from the JSONL log that "
        "shrinkscope.watch(log_to=...) writes; events (e.g. a defer switch) are vertical lines.",
    )
    p.add_argument("run", metavar="RUN.jsonl")
    p.add_argument(
        "--out", metavar="DIR", default="shrinkscope-report",
        help="output folder for timeline.png and report.html (default: shrinkscope-report)"
    )
    _force(p)
    p.set_defaults(func=_cmd_report)

    _add_demo(sub, demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shrinkscope`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    demo = None
    if argv[:1] == ["demo"]:  # the reference module is imported only when the demo is asked for
        demo, error = _demo_module()
        if demo is None:
            print(f"shrinkscope: error: {error}", file=sys.stderr)
            return 2
    parser = build_parser(demo)
    _printable_streams()
    _warned.clear()
    # the demo keeps the default SIGTERM: its worker processes (forked) must still die when terminated
    with warnings.catch_warnings(), terminate_cleanly() if demo is None else contextlib.nullcontext():
        warnings.showwarning = _one_line_warning
        return _run(parser, argv, demo)


def _run(parser: argparse.ArgumentParser, argv: list[str], demo: object | None) -> int:
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a one-line usage error (status 2)
            return exc.code if isinstance(exc.code, int) else 2
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        if getattr(args, "out", None) and args.func is not getattr(demo, "main", None):
            check_out(args.out, force=getattr(args, "force", False))  # before any work, not after it
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers, not at interpreter exit
        return status
    except KeyboardInterrupt as exc:
        _quiet_stdout()
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"shrinkscope: {what} (nothing half-written was left behind)", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        _quiet_stdout()
        print("shrinkscope: error: the output pipe was closed before everything was written",
              file=sys.stderr)
        return 2
    except (ValueError, OSError, OutputError) as exc:
        # CheckpointError / TimelineError / metric input errors: bad input, one line, no traceback.
        _error(" ".join(str(exc).split()) or type(exc).__name__)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: still one line; the traceback on request
        if os.environ.get("SHRINKSCOPE_DEBUG"):
            raise
        _error(f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); rerun with "
               "SHRINKSCOPE_DEBUG=1 for the traceback and please report it")
        return 1


def _printable_streams() -> None:
    """A name the terminal's encoding cannot show (``PYTHONIOENCODING=ascii``, a non-UTF-8 locale) is printed
    escaped instead of failing the whole command with an encoding error."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


_warned: set[str] = set()


def _one_line_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                      line: str | None = None) -> None:
    """Library warnings (torch, matplotlib, numpy) as one ``shrinkscope: warning:`` line each, shown once,
    instead of Python's two-line form that quotes the library's source."""
    text = " ".join(str(message).split())[:300]
    if text in _warned:
        return
    _warned.add(text)
    try:
        print(f"shrinkscope: warning: {printable(text)} ({category.__name__})", file=sys.stderr)
    except (BrokenPipeError, OSError, ValueError):
        pass


def _error(text: str) -> None:
    try:
        print(f"shrinkscope: error: {printable(text)}", file=sys.stderr)
    except (BrokenPipeError, OSError):
        pass


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
