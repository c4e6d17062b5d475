"""The ``splitldm`` command: ``generate``, ``profile`` and the subcommands in `splitldm.cli`."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from splitldm.checks import check_output_path, check_seed


def _seed_generator(seed: int, name: str = "--seed"):
    import torch

    return torch.Generator().manual_seed(check_seed(seed, name))


class _Parser(argparse.ArgumentParser):
    """argparse with the command's one-line error format: ``splitldm <cmd>: error: <message>``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def cmd_generate(args: argparse.Namespace) -> int:
    if getattr(args, "edge", None):  # the UE of a `splitldm serve-edge` service
        from splitldm.cli.serve import generate_remote

        return generate_remote(args)
    from splitldm.link.stack import Link
    from splitldm.pipeline.models import SCHEDULERS, load_pipeline
    from splitldm.pipeline.split import SplitPipeline

    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler: unknown scheduler {args.scheduler!r}; choose from {sorted(SCHEDULERS)}")
    check_seed(args.seed, "--seed")
    path = check_output_path(args.out, "--out")  # before the work: a blocked or unwritable --out fails now
    pipe = load_pipeline(args.model, scheduler=args.scheduler)
    split = SplitPipeline(pipe, split_step=args.split_step, split_stage=args.split_stage, link=Link(),
                          condition=args.condition)
    start = time.perf_counter()
    out = split(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                generator=_seed_generator(args.seed), output_type="pil")
    elapsed = time.perf_counter() - start
    out.images[0].save(path)
    report = {"out": str(path), "model": args.model, "scheduler": type(pipe.scheduler).__name__,
              "steps": args.steps, "split_step": args.split_step, "split_stage": args.split_stage,
              "payload_bits": out.sent.num_bits(), "payload_tensor_bits": out.sent.tensor_bits(),
              "seconds": round(elapsed, 3)}
    print(json.dumps(report))
    return 0


def _profile_chain(name: str, height: int | None):
    """(chain, latent side or None, default text length or None) for ``splitldm profile --model name``."""
    from splitldm.pipeline.dit_chain import dit_chain
    from splitldm.pipeline.dit_specs import get_dit_spec, is_dit_name
    from splitldm.pipeline.models import SPECS, build_unet, get_spec, load_pipeline
    from splitldm.pipeline.chain import UNetChain

    if is_dit_name(name) and not Path(name).exists():
        spec = get_dit_spec(name)
        scale = spec.vae_scale_factor
        return dit_chain(spec.build_transformer("meta")), (height // scale if height else None), spec.text_length
    if name.removesuffix("-random") in SPECS and not Path(name).exists():
        scale = get_spec(name).vae_scale_factor
        return UNetChain(build_unet(name, device="meta")), (height // scale if height else None), None
    pipe = load_pipeline(name)
    scale = getattr(pipe, "vae_scale_factor", 8)
    latent = height // scale if height else None
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        return dit_chain(transformer), latent, None
    return UNetChain(pipe.unet), latent, None


def cmd_profile(args: argparse.Namespace) -> int:
    from splitldm.pipeline.chain import format_cut_table

    if args.height is not None and (args.height < 16 or args.height % 16):
        raise ValueError(f"--height: expected a positive multiple of 16 pixels, got {args.height}")
    chain, latent, text_length = _profile_chain(args.model, args.height)
    rows = chain.cut_table(batch_size=args.batch_size, height=latent, width=latent,
                           text_length=args.text_length or text_length or 77, cfg=args.cfg)
    if args.json:
        print(json.dumps([asdict(r) for r in rows]))
    else:
        print(format_cut_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="splitldm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate one image, split between ES and UE (ideal link)")
    g.add_argument("prompt")
    g.add_argument("--model", default="tiny", help="shipped name, *-random config, local folder or hub id")
    g.add_argument("--steps", type=int, default=25)
    g.add_argument("--split-step", type=int, default=10)
    g.add_argument("--split-stage", type=int, default=None, help="cut inside the UNet pass (UNetChain stage)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance-scale", type=float, default=7.5)
    g.add_argument("--scheduler", default=None, help="ddim, euler, euler-a, dpm++, lcm, pndm")
    g.add_argument("--condition", default="prompt", choices=["prompt", "embeddings"])
    g.add_argument("--out", default="out/generate.png")
    from splitldm.cli.serve import add_edge_arguments

    add_edge_arguments(g)  # --edge URL and its options
    g.set_defaults(func=cmd_generate)

    p = sub.add_parser("profile", help="cut table of a denoiser (UNet stages or DiT blocks): bytes, parameters "
                                       "and FLOPs per cut, counted without weights")
    p.add_argument("--model", default="sd15", help="sd15, sd21, sdxl, sd3, sd35-large, pixart, pixart-sigma, flux, "
                                                   "flux-schnell, tiny, micro, or a local pipeline folder")
    p.add_argument("--height", type=int, default=None, help="image side in pixels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--text-length", type=int, default=None,
                   help="text tokens (default: the model's: 77 CLIP; SD3 333, PixArt 120, Flux 512)")
    p.add_argument("--cfg", action="store_true", help="count the doubled classifier-free-guidance batch")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)

    import splitldm.cli as commands

    for info in pkgutil.iter_modules(commands.__path__):
        if info.name == "main":
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


#: What a command reports as one line (exit 2) instead of a traceback: bad values and types (the library's
#: boundary errors), files (missing, unreadable, unwritable, blocked), and malformed YAML configs.
USER_ERRORS = (ValueError, TypeError, OSError)


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_ERRORS) or type(exc).__module__.split(".")[0] == "yaml"  # yaml.YAMLError


def error_line(args: argparse.Namespace, exc: BaseException) -> str:
    """``splitldm <cmd>: error: <message>`` on one line (whitespace of multi-line messages collapsed)."""
    command = " ".join(str(c) for c in (args.command, getattr(args, "rl_command", None)) if c)
    message = " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__module__.split(".")[0] == "yaml":
        where = getattr(args, "config", None)
        message = f"--config: {where} is not valid YAML: {message}" if where else f"malformed YAML: {message}"
    elif isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename is not None:
        message = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return f"splitldm {command}: error: {message}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``splitldm`` command; returns the exit status (2 for bad input, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given, for the records
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error (see USER_ERRORS)
        if not _is_user_error(exc):
            raise
        print(error_line(args, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
