"""`UNetChain`: a diffusers `UNet2DConditionModel` as an ordered list of stages with an explicit carry.

Stages: ``input`` (time/text embeddings + conv_in), ``down.0`` .. ``down.{n-1}``, ``mid``,
``up.0`` .. ``up.{m-1}``, ``output`` (norm, act, conv_out). Running stages ``[0, c)`` on one machine and
``[c, len(chain))`` on another equals ``unet(...)`` exactly for every cut ``c``: the stages reuse the
UNet's own modules and helper methods, in the order of its `forward`.

What must cross at cut ``c`` is the `Carry` between stage ``c-1`` and ``c``: the hidden state, the skip
stack, the time embedding and the text embeddings (before stage 0, the raw UNet inputs; after the
last stage, only the output). `UNetChain.cut_table` gives its size, parameters and FLOPs per side.

SDXL's added conditioning (``added_cond_kwargs``: pooled ``text_embeds`` (B, 1280) and ``time_ids``
(B, 6)) enters the time embedding in stage ``input``: before it they cross as ``inputs.added_cond_kwargs.*``,
after it they are folded into ``emb``. DiTs (SD3, PixArt, Flux) have their own chain of transformer
blocks: `splitldm.pipeline.dit_chain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from splitldm.pipeline.flops import count_flops, num_params, tensor_bytes

_UNSUPPORTED = ("down_block_additional_residuals", "mid_block_additional_residual",
                "down_intrablock_additional_residuals")


@dataclass
class Carry:
    """What flows between UNet stages (and across a cut).

    Attributes:
        hidden: (B, C, H, W) the hidden state (before stage 0: the noisy latent input).
        skips: the skip-connection stack, each (B, C_i, H_i, W_i); consumed by the up blocks.
        emb: (B, D_t) time (+ class / added) embedding after stage 0; None before.
        encoder_hidden_states: (B, L, D) text embeddings (after stage 0: as the blocks use them).
        inputs: before stage 0 only: ``timestep`` and other raw conditioning (``timestep_cond``,
            ``class_labels``, ``added_cond_kwargs``).
        attention_mask / encoder_attention_mask: additive masks, as the blocks use them.
        cross_attention_kwargs: passed to attention processors (not transmitted).
        forward_upsample_size: whether up blocks need explicit sizes (odd latent sizes).
    """

    hidden: torch.Tensor
    skips: tuple[torch.Tensor, ...] = ()
    emb: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    attention_mask: torch.Tensor | None = None
    encoder_attention_mask: torch.Tensor | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    forward_upsample_size: bool = False

    def last_skip_is_hidden(self) -> bool:
        """Down blocks push their output onto the skip stack: then it crosses once, as ``hidden``."""
        return bool(self.skips) and self.skips[-1] is self.hidden

    def layout(self) -> dict[str, Any]:
        """JSON-able facts the receiver needs besides `tensors` to rebuild this carry."""
        return {"num_skips": len(self.skips), "last_skip_is_hidden": self.last_skip_is_hidden(),
                "forward_upsample_size": self.forward_upsample_size}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that must cross a cut here, by name (``skip.i`` in stack order; none twice)."""
        out: dict[str, torch.Tensor] = {"hidden": self.hidden}
        shared = self.last_skip_is_hidden()
        out.update({f"skip.{i}": s for i, s in enumerate(self.skips) if not (shared and i == len(self.skips) - 1)})
        for name in ("emb", "encoder_hidden_states", "attention_mask", "encoder_attention_mask"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name, value in _flatten_inputs(self.inputs).items():
            out[f"inputs.{name}"] = value
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], layout: dict[str, Any],
                     cross_attention_kwargs: dict[str, Any] | None = None) -> "Carry":
        """Inverse of `tensors` + `layout` (the receiver's side of a cut)."""
        if "hidden" not in tensors:
            raise ValueError(f"tensors: a carry needs 'hidden', got {sorted(tensors)}")
        try:
            n_skips, shared = int(layout["num_skips"]), bool(layout["last_skip_is_hidden"])
            forward_upsample_size = bool(layout["forward_upsample_size"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"layout: incomplete carry layout {layout!r}") from exc
        try:
            skips = tuple(tensors["hidden"] if (shared and i == n_skips - 1) else tensors[f"skip.{i}"]
                          for i in range(n_skips))
        except KeyError as exc:
            raise ValueError(f"tensors: skip tensor {exc} is missing") from None
        inputs = _unflatten_inputs({k[len("inputs."):]: v for k, v in tensors.items() if k.startswith("inputs.")})
        return cls(hidden=tensors["hidden"], skips=skips, emb=tensors.get("emb"),
                   encoder_hidden_states=tensors.get("encoder_hidden_states"), inputs=inputs,
                   attention_mask=tensors.get("attention_mask"),
                   encoder_attention_mask=tensors.get("encoder_attention_mask"),
                   cross_attention_kwargs=cross_attention_kwargs, forward_upsample_size=forward_upsample_size)

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes that cross if every tensor is stored as ``dtype`` (masks and ids keep theirs)."""
        total = 0
        for t in self.tensors().values():
            total += tensor_bytes(t, dtype if t.is_floating_point() else None)
        return total


def _flatten_inputs(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, torch.Tensor)})
        elif isinstance(value, torch.Tensor):
            out[key] = value
    return out


def _unflatten_inputs(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = value
        else:
            out[key] = value
    return out


def check_stage_range(start: Any, stop: Any, n: int, stages: str) -> tuple[int, int]:
    """``(start, stop)`` of a stage range ``[start, stop)`` of a chain of ``n`` stages (``stop`` None: ``n``);
    TypeError / ValueError naming ``start, stop`` otherwise. ``stages`` describes the chain in messages."""
    stop = n if stop is None else stop
    for name, value in (("start", start), ("stop", stop)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if not 0 <= start <= stop <= n:
        raise ValueError(f"start, stop: need 0 <= start <= stop <= {n} ({stages}), got {start}, {stop}")
    return start, stop


@dataclass(frozen=True)
class Cut:
    """One row of a cut table: what splitting before stage ``index`` costs.

    ``bytes_fp16`` / ``bytes_fp32``: what crosses (floating tensors in that precision), batch included.
    ``params_es`` / ``params_ue``: parameters needed on each side. ``flops_es`` / ``flops_ue``: FLOPs of
    one UNet pass on each side (counted on the meta device).
    """

    index: int
    after: str
    before: str
    tensors: dict[str, tuple[int, ...]]
    bytes_fp16: int
    bytes_fp32: int
    params_es: int
    params_ue: int
    flops_es: int
    flops_ue: int


class UNetChain:
    """A UNet as ``len(chain)`` stages. ``chain(sample, t, text)`` equals ``unet(sample, t, text).sample``.

    Args:
        unet: any `UNet2DConditionModel` (its modules are used in place, never copied or patched).
    """

    def __init__(self, unet: UNet2DConditionModel):
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet: expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        self.unet = unet
        self.names = (["input"] + [f"down.{i}" for i in range(len(unet.down_blocks))]
                      + (["mid"] if unet.mid_block is not None else [])
                      + [f"up.{i}" for i in range(len(unet.up_blocks))] + ["output"])

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"UNetChain({len(self)} stages: {', '.join(self.names)})"

    # ------------------------------------------------------------------ carry
    def start(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
              encoder_hidden_states: torch.Tensor, *, class_labels: torch.Tensor | None = None,
              timestep_cond: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
              cross_attention_kwargs: dict[str, Any] | None = None,
              added_cond_kwargs: dict[str, torch.Tensor] | None = None,
              encoder_attention_mask: torch.Tensor | None = None, **unsupported: Any) -> Carry:
        """The carry before stage 0, from the same arguments `UNet2DConditionModel.forward` takes.

        Shapes: ``sample`` (B, C_in, H, W); ``encoder_hidden_states`` (B, L, D). ControlNet / adapter
        residuals are not supported (TypeError).
        """
        if unsupported:
            raise TypeError(f"{sorted(unsupported)}: not supported by UNetChain (ControlNet/adapter residuals)")
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
            raise ValueError(f"sample: expected a (B, C, H, W) tensor, got {getattr(sample, 'shape', type(sample))}")
        if sample.shape[1] != self.unet.config.in_channels:
            raise ValueError(f"sample: expected {self.unet.config.in_channels} channels, got {sample.shape[1]}")
        if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.ndim != 3:
            raise ValueError("encoder_hidden_states: expected a (B, L, D) tensor")
        up_factor = 2 ** self.unet.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor(timestep, device=sample.device)
        inputs: dict[str, Any] = {"timestep": timestep}
        for name, value in (("class_labels", class_labels), ("timestep_cond", timestep_cond),
                            ("added_cond_kwargs", added_cond_kwargs)):
            if value is not None:
                inputs[name] = value
        return Carry(hidden=sample, encoder_hidden_states=encoder_hidden_states, inputs=inputs,
                     attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                     cross_attention_kwargs=cross_attention_kwargs, forward_upsample_size=forward_upsample_size)

    def carry_from_tensors(self, tensors: dict[str, torch.Tensor], layout: dict[str, Any],
                           cross_attention_kwargs: dict[str, Any] | None = None) -> Carry:
        """The receiver's carry from what crossed (`Carry.tensors` + `Carry.layout`); the same call
        on a `splitldm.pipeline.dit_chain.DiTChain` rebuilds a `DiTCarry`."""
        return Carry.from_tensors(tensors, layout, cross_attention_kwargs)

    # ----------------------------------------------------------------- stages
    def _check_range(self, start: int, stop: int | None) -> tuple[int, int]:
        return check_stage_range(start, stop, len(self), f"stages {self.names}")

    def run(self, carry: Carry, start: int = 0, stop: int | None = None) -> Carry:
        """Run stages ``[start, stop)`` on ``carry`` and return the new carry."""
        if not isinstance(carry, Carry):
            raise TypeError(f"carry: expected a Carry, got {type(carry).__name__}")
        start, stop = self._check_range(start, stop)
        for index in range(start, stop):
            carry = self.stage(index, carry)
        return carry

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs) -> torch.Tensor:
        """The whole UNet pass through the chain: equals ``unet(...)[0]``."""
        return self.run(self.start(sample, timestep, encoder_hidden_states, **kwargs)).hidden

    def stage(self, index: int, carry: Carry) -> Carry:
        """Run stage ``index`` alone."""
        name = self.names[index]
        if name == "input":
            return self._input(carry)
        if carry.emb is None:
            raise ValueError(f"carry: stage {name!r} needs the carry after stage 'input' (emb is missing)")
        if name.startswith("down."):
            return self._down(int(name[5:]), carry)
        if name == "mid":
            return self._mid(carry)
        if name.startswith("up."):
            return self._up(int(name[3:]), carry)
        return self._output(carry)

    def _input(self, c: Carry) -> Carry:
        unet, sample = self.unet, c.hidden
        if "timestep" not in c.inputs:
            raise ValueError("carry: stage 'input' needs the carry from UNetChain.start (no timestep)")
        added = c.inputs.get("added_cond_kwargs")
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        t_emb = unet.get_time_embed(sample=sample, timestep=c.inputs["timestep"])
        emb = unet.time_embedding(t_emb, c.inputs.get("timestep_cond"))
        class_emb = unet.get_class_embed(sample=sample, class_labels=c.inputs.get("class_labels"))
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=c.encoder_hidden_states, added_cond_kwargs=added)
        if unet.config.addition_embed_type == "image_hint":
            aug_emb, hint = aug_emb
            sample = torch.cat([sample, hint], dim=1)
        emb = emb + aug_emb if aug_emb is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        ehs = unet.process_encoder_hidden_states(encoder_hidden_states=c.encoder_hidden_states,
                                                 added_cond_kwargs=added)
        cak = c.cross_attention_kwargs
        if cak is not None and cak.get("gligen") is not None:
            raise TypeError("cross_attention_kwargs: GLIGEN is not supported by UNetChain")
        sample = unet.conv_in(sample)
        return replace(c, hidden=sample, skips=(sample,), emb=emb, encoder_hidden_states=ehs, inputs={})

    def _down(self, i: int, c: Carry) -> Carry:
        block = self.unet.down_blocks[i]
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=c.hidden, temb=c.emb, encoder_hidden_states=c.encoder_hidden_states,
                                attention_mask=c.attention_mask, cross_attention_kwargs=c.cross_attention_kwargs,
                                encoder_attention_mask=c.encoder_attention_mask)
        else:
            sample, res = block(hidden_states=c.hidden, temb=c.emb)
        return replace(c, hidden=sample, skips=c.skips + tuple(res))

    def _mid(self, c: Carry) -> Carry:
        block = self.unet.mid_block
        if getattr(block, "has_cross_attention", False):
            sample = block(c.hidden, c.emb, encoder_hidden_states=c.encoder_hidden_states,
                           attention_mask=c.attention_mask, cross_attention_kwargs=c.cross_attention_kwargs,
                           encoder_attention_mask=c.encoder_attention_mask)
        else:
            sample = block(c.hidden, c.emb)
        return replace(c, hidden=sample)

    def _up(self, i: int, c: Carry) -> Carry:
        block = self.unet.up_blocks[i]
        n = len(block.resnets)
        if len(c.skips) < n:
            raise ValueError(f"carry: stage 'up.{i}' needs {n} skip tensors, the carry has {len(c.skips)}")
        res, skips = c.skips[-n:], c.skips[:-n]
        is_final = i == len(self.unet.up_blocks) - 1
        upsample_size = skips[-1].shape[2:] if (not is_final and c.forward_upsample_size) else None
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=c.hidden, temb=c.emb, res_hidden_states_tuple=res,
                           encoder_hidden_states=c.encoder_hidden_states,
                           cross_attention_kwargs=c.cross_attention_kwargs, upsample_size=upsample_size,
                           attention_mask=c.attention_mask, encoder_attention_mask=c.encoder_attention_mask)
        else:
            sample = block(hidden_states=c.hidden, temb=c.emb, res_hidden_states_tuple=res,
                           upsample_size=upsample_size)
        return replace(c, hidden=sample, skips=skips)

    def _output(self, c: Carry) -> Carry:
        unet, sample = self.unet, c.hidden
        if unet.conv_norm_out:
            sample = unet.conv_norm_out(sample)
            sample = unet.conv_act(sample)
        sample = unet.conv_out(sample)
        # After the last stage only the output remains: nothing else needs to cross.
        return Carry(hidden=sample, cross_attention_kwargs=c.cross_attention_kwargs)

    # --------------------------------------------------------------- cut table
    def stage_modules(self, index: int) -> list[torch.nn.Module]:
        """The modules whose parameters stage ``index`` uses."""
        unet, name = self.unet, self.names[index]
        if name == "input":
            return [m for m in (unet.time_embedding, unet.class_embedding, getattr(unet, "add_embedding", None),
                                getattr(unet, "encoder_hid_proj", None), unet.conv_in) if m is not None]
        if name.startswith("down."):
            return [unet.down_blocks[int(name[5:])]]
        if name == "mid":
            return [unet.mid_block]
        if name.startswith("up."):
            return [unet.up_blocks[int(name[3:])]]
        return [m for m in (unet.conv_norm_out, unet.conv_out) if m is not None]

    def cut_table(self, batch_size: int = 1, height: int | None = None, width: int | None = None,
                  text_length: int = 77, cfg: bool = False) -> list[Cut]:
        """Per boundary ``c = 0..len(chain)``: bytes crossing, parameters and FLOPs on each side.

        Computed on a weightless meta-device copy of the UNet (any size, no memory). ``height`` /
        ``width`` are in latent pixels (default: the UNet's ``sample_size``); ``cfg`` doubles the batch
        as classifier-free guidance does. ``bytes_*`` count the whole (doubled) batch.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
        cfg_size = self.unet.config.sample_size
        default = cfg_size if isinstance(cfg_size, int) else cfg_size[0]
        height, width = height or default, width or default
        for name, value in (("height", height), ("width", width), ("text_length", text_length)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        with torch.device("meta"):
            meta_unet = UNet2DConditionModel(**self.unet.config).eval()
        chain = UNetChain(meta_unet)
        b = batch_size * (2 if cfg else 1)
        cfg_ = meta_unet.config
        sample = torch.empty(b, cfg_.in_channels, height, width, device="meta")
        cross_dim = cfg_.cross_attention_dim
        cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
        text = torch.empty(b, text_length, cross_dim, device="meta")
        kwargs: dict[str, Any] = {}
        if cfg_.time_cond_proj_dim is not None:
            kwargs["timestep_cond"] = torch.empty(b, cfg_.time_cond_proj_dim, device="meta")
        if cfg_.addition_embed_type == "text_time":
            text_embed_dim = cfg_.projection_class_embeddings_input_dim - 6 * cfg_.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(b, text_embed_dim, device="meta"),
                                           "time_ids": torch.empty(b, 6, device="meta")}
        carry = chain.start(sample, torch.full((b,), 10, device="meta"), text, **kwargs)
        carries, flops = [carry], []
        for index in range(len(chain)):
            f, carry = count_flops(chain.stage, index, carry)
            flops.append(f)
            carries.append(carry)
        params = [num_params(chain.stage_modules(i)) for i in range(len(chain))]
        rows = []
        for c, carry in enumerate(carries):
            rows.append(Cut(
                index=c,
                after=chain.names[c - 1] if c > 0 else "(start)",
                before=chain.names[c] if c < len(chain) else "(end)",
                tensors={k: tuple(v.shape) for k, v in carry.tensors().items()},
                bytes_fp16=carry.nbytes(torch.float16),
                bytes_fp32=carry.nbytes(torch.float32),
                params_es=sum(params[:c]), params_ue=sum(params[c:]),
                flops_es=sum(flops[:c]), flops_ue=sum(flops[c:]),
            ))
        return rows


def format_cut_table(rows: list[Cut]) -> str:
    """A plain-text table of `UNetChain.cut_table` / `DiTChain.cut_table` rows (KiB, millions of
    parameters, GFLOPs)."""
    w = max([8] + [len(r.after) for r in rows] + [len(r.before) for r in rows])
    head = f"{'cut':>3}  {'after':<{w}} {'before':<{w}} {'fp16 KiB':>10} {'fp32 KiB':>10} {'ES Mparam':>10} {'UE Mparam':>10} {'ES GFLOP':>10} {'UE GFLOP':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.index:>3}  {r.after:<{w}} {r.before:<{w}} {r.bytes_fp16 / 1024:>10.1f} {r.bytes_fp32 / 1024:>10.1f} "
                     f"{r.params_es / 1e6:>10.2f} {r.params_ue / 1e6:>10.2f} {r.flops_es / 1e9:>10.2f} {r.flops_ue / 1e9:>10.2f}")
    return "\n".join(lines)
