"""DiT denoisers as chains of transformer blocks with an explicit carry (the DiT twin of `UNetChain`).

Three diffusers transformers, one design:

| model | stages | what crosses a cut between blocks |
|---|---|---|
| `SD3Transformer2DModel` | ``input``, ``block.0`` .. ``block.{n-1}``, ``output`` | image tokens (B, N, D) *and* text tokens (B, L, D) (joint blocks update both), ``temb`` (B, D) |
| `PixArtTransformer2DModel` | ``input``, ``block.0`` .. ``block.{n-1}``, ``output`` | image tokens (B, N, D); the text (B, L, D) is not updated per block (it can be recomputed from the prompt), its mask, ``temb`` (B, 6D) and ``embedded_timestep`` (B, D) |
| `FluxTransformer2DModel` | ``input``, ``double.0`` .. ``double.{n-1}``, ``single.0`` .. ``single.{m-1}``, ``output`` | image tokens (B, N, D) and text tokens (B, L, D), ``temb`` (B, D), the RoPE position ids (L + N, 3) |

``input`` is the patch / context embedding and the time (+ pooled text, guidance, size) embedding;
``output`` the final norm, projection and (SD3, PixArt) unpatchify. Running stages ``[0, c)`` on one
machine and ``[c, len(chain))`` on another equals ``transformer(...).sample`` bit for bit for every
cut ``c``: the stages call the model's own modules in the order of its ``forward``.

    chain = dit_chain(pipe.transformer)                # SD3Chain, PixArtChain or FluxChain
    es = chain.run(chain.start(**forward_kwargs), 0, c)  # the ES: stages [0, c)
    tensors, layout = es.tensors(), es.layout()        # what crosses (a dict of tensors + JSON facts)
    ue = chain.carry_from_tensors(tensors, layout)     # the UE rebuilds the carry ...
    out = chain.run(ue, c).hidden                      # ... and finishes: == transformer(**forward_kwargs)[0]

`cut_table` counts bytes, parameters and FLOPs per cut on a weightless meta-device copy (any size).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from splitldm.pipeline.chain import Cut, check_stage_range
from splitldm.pipeline.chain import _flatten_inputs as _flatten
from splitldm.pipeline.chain import _unflatten_inputs as _unflatten
from splitldm.pipeline.flops import count_flops, num_params, tensor_bytes

__all__ = ["DiTCarry", "DiTChain", "SD3Chain", "PixArtChain", "FluxChain", "dit_chain", "DIT_CHAINS"]


@dataclass
class DiTCarry:
    """What flows between DiT stages (and across a cut).

    Attributes:
        hidden: before stage 0 the model input ((B, C, H, W) latents; Flux: packed (B, N, C_in));
            between blocks the image tokens (B, N, D); after the last stage the model output.
        encoder_hidden_states: (B, L, D_text) text tokens: the raw text embeddings before stage 0, the
            embedded (and, for SD3 / Flux, per-block updated) text stream after it. None after SD3's
            last block (``context_pre_only``) and after the output stage.
        temb: the conditioning embedding after stage 0: (B, D) (SD3, Flux) or the (B, 6 D)
            adaLN-single modulation (PixArt). None before stage 0.
        extras: other tensors the later stages need, by name: PixArt ``embedded_timestep`` (B, D),
            ``encoder_attention_mask`` / ``attention_mask`` (B, 1, L) additive biases; Flux ``ids``
            (L + N, 3) RoPE positions (text first).
        inputs: before stage 0 only: raw conditioning (``timestep``, ``pooled_projections``,
            ``guidance``, ``added_cond_kwargs``, ...).
        size: the latent (H, W) the output stage unpatchifies to (SD3, PixArt); None for Flux.
        attention_kwargs: passed to the attention processors (not transmitted).
        rotary: Flux's (cos, sin) rotary embedding, recomputed from ``extras["ids"]`` (not transmitted).
    """

    hidden: torch.Tensor
    encoder_hidden_states: torch.Tensor | None = None
    temb: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    attention_kwargs: dict[str, Any] | None = None
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None

    def layout(self) -> dict[str, Any]:
        """JSON-able facts the receiver needs besides `tensors` to rebuild this carry."""
        return {"size": None if self.size is None else [int(self.size[0]), int(self.size[1])]}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that must cross a cut here, by name (``hidden``, ``encoder_hidden_states``,
        ``temb``, the extras by their own names, raw inputs as ``inputs.<name>``)."""
        out: dict[str, torch.Tensor] = {"hidden": self.hidden}
        for name in ("encoder_hidden_states", "temb"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update({k: v for k, v in self.extras.items() if v is not None})
        for name, value in _flatten(self.inputs).items():
            out[f"inputs.{name}"] = value
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], layout: dict[str, Any],
                     attention_kwargs: dict[str, Any] | None = None) -> "DiTCarry":
        """Inverse of `tensors` + `layout` (the receiver's side of a cut)."""
        if not isinstance(tensors, dict) or "hidden" not in tensors:
            raise ValueError(f"tensors: a carry needs 'hidden', got {sorted(tensors) if isinstance(tensors, dict) else tensors!r}")
        if not isinstance(layout, dict) or "size" not in layout:
            raise ValueError(f"layout: incomplete carry layout {layout!r}")
        size = layout["size"]
        if size is not None:
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ValueError(f"layout: 'size' must be None or [H, W], got {size!r}")
            size = (int(size[0]), int(size[1]))
        known = {"hidden", "encoder_hidden_states", "temb"}
        extras = {k: v for k, v in tensors.items() if k not in known and not k.startswith("inputs.")}
        inputs = _unflatten({k[len("inputs."):]: v for k, v in tensors.items() if k.startswith("inputs.")})
        return cls(hidden=tensors["hidden"], encoder_hidden_states=tensors.get("encoder_hidden_states"),
                   temb=tensors.get("temb"), extras=extras, inputs=inputs, size=size,
                   attention_kwargs=attention_kwargs)

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes that cross if every floating tensor is stored as ``dtype`` (others keep theirs)."""
        return sum(tensor_bytes(t, dtype if t.is_floating_point() else None) for t in self.tensors().values())


def _check_tensor(value: Any, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got {getattr(value, 'shape', type(value).__name__)}")
    return value


def _as_timestep(timestep: Any, like: torch.Tensor) -> torch.Tensor:
    if timestep is None:
        raise ValueError("timestep: required")
    if not isinstance(timestep, torch.Tensor):
        timestep = torch.tensor(timestep, device=like.device)
    return timestep


class DiTChain:
    """Base class: a diffusers transformer as ``len(chain)`` stages (see the module docstring).

    Subclasses set ``model_class`` (name of the diffusers class), ``family``, ``text_updated_per_block``
    and implement ``start``, ``_input``, ``_block``, ``_output``, ``stage_modules`` and ``meta_inputs``.
    """

    model_class = ""
    family = ""
    #: Whether the text stream changes from block to block (then it must cross every cut).
    text_updated_per_block = True
    #: Text tokens of the real model's default prompt encoding (cut tables).
    default_text_length = 77

    def __init__(self, model: nn.Module):
        if type(model).__name__ != self.model_class or not isinstance(model, nn.Module):
            raise TypeError(f"transformer: expected a diffusers {self.model_class}, got {type(model).__name__}")
        self.model = model
        self.names = self._names()

    def _names(self) -> list[str]:
        return ["input"] + [f"block.{i}" for i in range(len(self.model.transformer_blocks))] + ["output"]

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        inner = self.names if len(self) <= 8 else self.names[:3] + ["..."] + self.names[-3:]
        return f"{type(self).__name__}({len(self)} stages: {', '.join(inner)})"

    # ----------------------------------------------------------------- running
    def _check_range(self, start: int, stop: int | None) -> tuple[int, int]:
        return check_stage_range(start, stop, len(self), f"{len(self)} stages")

    def run(self, carry: DiTCarry, start: int = 0, stop: int | None = None) -> DiTCarry:
        """Run stages ``[start, stop)`` on ``carry`` and return the new carry."""
        if not isinstance(carry, DiTCarry):
            raise TypeError(f"carry: expected a DiTCarry, got {type(carry).__name__}")
        start, stop = self._check_range(start, stop)
        for index in range(start, stop):
            carry = self.stage(index, carry)
        return carry

    def __call__(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The whole pass through the chain: equals ``transformer(hidden_states, **kwargs)[0]``."""
        return self.run(self.start(hidden_states, **kwargs)).hidden

    def stage(self, index: int, carry: DiTCarry) -> DiTCarry:
        """Run stage ``index`` alone."""
        name = self.names[index]
        if name == "input":
            if carry.temb is not None:
                raise ValueError("carry: stage 'input' needs the carry from start() (this one already ran it)")
            return self._input(carry)
        if carry.temb is None:
            raise ValueError(f"carry: stage {name!r} needs the carry after stage 'input' (temb is missing)")
        if name == "output":
            return self._output(carry)
        kind, i = name.split(".")
        return self._block(kind, int(i), carry)

    def carry_from_tensors(self, tensors: dict[str, torch.Tensor], layout: dict[str, Any],
                           attention_kwargs: dict[str, Any] | None = None) -> DiTCarry:
        """The receiver's carry from what crossed (`DiTCarry.tensors` + `DiTCarry.layout`)."""
        return DiTCarry.from_tensors(tensors, layout, attention_kwargs)

    # ------------------------------------------------------------ per family
    def start(self, hidden_states: torch.Tensor, **kwargs: Any) -> DiTCarry:  # pragma: no cover - abstract
        raise NotImplementedError

    def _input(self, c: DiTCarry) -> DiTCarry:  # pragma: no cover - abstract
        raise NotImplementedError

    def _block(self, kind: str, i: int, c: DiTCarry) -> DiTCarry:  # pragma: no cover - abstract
        raise NotImplementedError

    def _output(self, c: DiTCarry) -> DiTCarry:  # pragma: no cover - abstract
        raise NotImplementedError

    def stage_modules(self, index: int) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def meta_inputs(self, b: int, h: int, w: int, text_length: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Meta-device ``(hidden_states, forward kwargs)`` for batch ``b``, an ``h x w`` latent and
        ``text_length`` text tokens (FLOP counting without weights)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _default_latent_size(self) -> int:
        size = getattr(self.model.config, "sample_size", None)
        return int(size) if isinstance(size, int) else 128

    def _unpatchify(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W), as SD3 / PixArt do at the end of ``forward``."""
        p = self.model.config.patch_size
        h, w = size[0] // p, size[1] // p
        x = x.reshape(shape=(x.shape[0], h, w, p, p, self.model.out_channels))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], self.model.out_channels, h * p, w * p))

    # --------------------------------------------------------------- cut table
    def cut_table(self, batch_size: int = 1, height: int | None = None, width: int | None = None,
                  text_length: int | None = None, cfg: bool = False) -> list[Cut]:
        """Per boundary ``c = 0..len(chain)``: bytes crossing, parameters and FLOPs on each side.

        Counted on a weightless meta-device copy of the transformer (any size, no memory). ``height`` /
        ``width``: latent pixels (before Flux's 2x2 packing; default: the model's ``sample_size``, 128
        for Flux = 1024 px); ``text_length``: text tokens (default: the real model's prompt length);
        ``cfg`` doubles the batch as classifier-free guidance does. ``bytes_*`` count the whole batch.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
        default = self._default_latent_size()
        height, width = height or default, width or default
        text_length = text_length or self.default_text_length
        for name, value in (("height", height), ("width", width), ("text_length", text_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {value!r}")
        p = getattr(self.model.config, "patch_size", 1) or 1
        p = 2 if self.family == "flux" else p
        if height % p or width % p:
            raise ValueError(f"height, width: must be multiples of the patch size {p}, got {height}x{width}")
        with torch.device("meta"):
            meta_model = type(self.model).from_config(self.model.config).eval()
        chain = type(self)(meta_model)
        b = batch_size * (2 if cfg else 1)
        hidden, kwargs = chain.meta_inputs(b, height, width, text_length)
        carry = chain.start(hidden, **kwargs)
        carries, flops = [carry], []
        for index in range(len(chain)):
            f, carry = count_flops(chain.stage, index, carry)
            flops.append(f)
            carries.append(carry)
        params = [num_params(chain.stage_modules(i)) for i in range(len(chain))]
        rows = []
        for c, carry in enumerate(carries):
            rows.append(Cut(
                index=c, after=chain.names[c - 1] if c > 0 else "(start)",
                before=chain.names[c] if c < len(chain) else "(end)",
                tensors={k: tuple(v.shape) for k, v in carry.tensors().items()},
                bytes_fp16=carry.nbytes(torch.float16), bytes_fp32=carry.nbytes(torch.float32),
                params_es=sum(params[:c]), params_ue=sum(params[c:]),
                flops_es=sum(flops[:c]), flops_ue=sum(flops[c:]),
            ))
        return rows


class SD3Chain(DiTChain):
    """`SD3Transformer2DModel` (SD3 / SD3.5) as ``input``, one stage per `JointTransformerBlock`, ``output``.

    ``start`` takes `SD3Transformer2DModel.forward`'s arguments: ``hidden_states`` (B, C, H, W),
    ``encoder_hidden_states`` (B, L, joint_attention_dim), ``pooled_projections`` (B, P), ``timestep`` (B,).
    Both streams cross a cut: each joint block updates image and text tokens (the last one only the image).
    """

    model_class = "SD3Transformer2DModel"
    family = "sd3"
    text_updated_per_block = True
    default_text_length = 333  # 77 CLIP tokens + 256 T5 tokens

    def start(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
              pooled_projections: torch.Tensor | None = None, timestep: Any = None,
              joint_attention_kwargs: dict[str, Any] | None = None, **unsupported: Any) -> DiTCarry:
        """The carry before stage 0 (ControlNet residuals, skip_layers and IP-adapters: TypeError)."""
        unsupported.pop("return_dict", None)
        if unsupported.get("skip_layers") is None:
            unsupported.pop("skip_layers", None)
        if unsupported.get("block_controlnet_hidden_states") is None:
            unsupported.pop("block_controlnet_hidden_states", None)
        if unsupported:
            raise TypeError(f"{sorted(unsupported)}: not supported by SD3Chain (ControlNet residuals, skip_layers)")
        if joint_attention_kwargs and "ip_adapter_image_embeds" in joint_attention_kwargs:
            raise TypeError("joint_attention_kwargs: IP-adapter image embeddings are not supported by SD3Chain")
        x = _check_tensor(hidden_states, "hidden_states", 4)
        if x.shape[1] != self.model.config.in_channels:
            raise ValueError(f"hidden_states: expected {self.model.config.in_channels} channels, got {x.shape[1]}")
        _check_tensor(encoder_hidden_states, "encoder_hidden_states", 3)
        _check_tensor(pooled_projections, "pooled_projections", 2)
        return DiTCarry(hidden=x, encoder_hidden_states=encoder_hidden_states,
                        inputs={"timestep": _as_timestep(timestep, x), "pooled_projections": pooled_projections},
                        size=(x.shape[-2], x.shape[-1]), attention_kwargs=joint_attention_kwargs)

    def _input(self, c: DiTCarry) -> DiTCarry:
        m = self.model
        hidden = m.pos_embed(c.hidden).contiguous()
        temb = m.time_text_embed(c.inputs["timestep"], c.inputs["pooled_projections"])
        text = m.context_embedder(c.encoder_hidden_states)
        return replace(c, hidden=hidden, encoder_hidden_states=text, temb=temb, inputs={})

    def _block(self, kind: str, i: int, c: DiTCarry) -> DiTCarry:
        text, hidden = self.model.transformer_blocks[i](
            hidden_states=c.hidden, encoder_hidden_states=c.encoder_hidden_states, temb=c.temb,
            joint_attention_kwargs=c.attention_kwargs)
        return replace(c, hidden=hidden, encoder_hidden_states=text)

    def _output(self, c: DiTCarry) -> DiTCarry:
        m = self.model
        x = m.proj_out(m.norm_out(c.hidden, c.temb))
        return DiTCarry(hidden=self._unpatchify(x, c.size), attention_kwargs=c.attention_kwargs)

    def stage_modules(self, index: int) -> list[nn.Module]:
        m, name = self.model, self.names[index]
        if name == "input":
            return [m.pos_embed, m.time_text_embed, m.context_embedder]
        if name == "output":
            return [m.norm_out, m.proj_out]
        return [m.transformer_blocks[int(name.split(".")[1])]]

    def meta_inputs(self, b, h, w, text_length):
        cfg = self.model.config
        return torch.empty(b, cfg.in_channels, h, w, device="meta"), {
            "encoder_hidden_states": torch.empty(b, text_length, cfg.joint_attention_dim, device="meta"),
            "pooled_projections": torch.empty(b, cfg.pooled_projection_dim, device="meta"),
            "timestep": torch.full((b,), 500.0, device="meta")}


class PixArtChain(DiTChain):
    """`PixArtTransformer2DModel` (PixArt-alpha / -sigma) as ``input``, one stage per
    `BasicTransformerBlock`, ``output``.

    ``start`` takes `PixArtTransformer2DModel.forward`'s arguments: ``hidden_states`` (B, C, H, W),
    ``encoder_hidden_states`` (B, L, caption_channels), ``timestep`` (B,), ``added_cond_kwargs``
    (``resolution`` (B, 2), ``aspect_ratio`` (B, 1), or None values), ``encoder_attention_mask`` (B, L).
    The text is projected once in ``input`` and not updated by the blocks, so a receiver that has the
    prompt can recompute it (`text_updated_per_block` is False); it still crosses by default.
    """

    model_class = "PixArtTransformer2DModel"
    family = "pixart"
    text_updated_per_block = False
    default_text_length = 120  # PixArt-alpha's T5 length (PixArt-sigma: 300)

    def start(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
              timestep: Any = None, added_cond_kwargs: dict[str, Any] | None = None,
              cross_attention_kwargs: dict[str, Any] | None = None, attention_mask: torch.Tensor | None = None,
              encoder_attention_mask: torch.Tensor | None = None, **unsupported: Any) -> DiTCarry:
        """The carry before stage 0; 2-D masks become additive biases as in ``forward``."""
        unsupported.pop("return_dict", None)
        if unsupported:
            raise TypeError(f"{sorted(unsupported)}: not supported by PixArtChain")
        m = self.model
        x = _check_tensor(hidden_states, "hidden_states", 4)
        if x.shape[1] != m.config.in_channels:
            raise ValueError(f"hidden_states: expected {m.config.in_channels} channels, got {x.shape[1]}")
        _check_tensor(encoder_hidden_states, "encoder_hidden_states", 3)
        if m.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("added_cond_kwargs: required (resolution, aspect_ratio) by this PixArt model")
        extras = {}
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = ((1 - attention_mask.to(x.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(x.dtype)) * -10000.0).unsqueeze(1)
        if attention_mask is not None:
            extras["attention_mask"] = attention_mask
        if encoder_attention_mask is not None:
            extras["encoder_attention_mask"] = encoder_attention_mask
        inputs: dict[str, Any] = {"timestep": _as_timestep(timestep, x)}
        if added_cond_kwargs is not None:
            inputs["added_cond_kwargs"] = dict(added_cond_kwargs)
        return DiTCarry(hidden=x, encoder_hidden_states=encoder_hidden_states, extras=extras, inputs=inputs,
                        size=(x.shape[-2], x.shape[-1]), attention_kwargs=cross_attention_kwargs)

    def _input(self, c: DiTCarry) -> DiTCarry:
        m = self.model
        batch_size = c.hidden.shape[0]
        hidden = m.pos_embed(c.hidden)
        added = c.inputs.get("added_cond_kwargs")
        if added is not None:  # None values do not survive a crossing: restore the keys
            added = {"resolution": added.get("resolution"), "aspect_ratio": added.get("aspect_ratio")}
        timestep, embedded = m.adaln_single(c.inputs["timestep"], added, batch_size=batch_size,
                                            hidden_dtype=hidden.dtype)
        text = c.encoder_hidden_states
        if m.caption_projection is not None:
            text = m.caption_projection(text).view(batch_size, -1, hidden.shape[-1])
        return replace(c, hidden=hidden, encoder_hidden_states=text, temb=timestep,
                       extras={**c.extras, "embedded_timestep": embedded}, inputs={})

    def _block(self, kind: str, i: int, c: DiTCarry) -> DiTCarry:
        hidden = self.model.transformer_blocks[i](
            c.hidden, attention_mask=c.extras.get("attention_mask"), encoder_hidden_states=c.encoder_hidden_states,
            encoder_attention_mask=c.extras.get("encoder_attention_mask"), timestep=c.temb,
            cross_attention_kwargs=c.attention_kwargs, class_labels=None)
        return replace(c, hidden=hidden)

    def _output(self, c: DiTCarry) -> DiTCarry:
        m = self.model
        if "embedded_timestep" not in c.extras:
            raise ValueError("carry: stage 'output' needs 'embedded_timestep' (from stage 'input')")
        embedded = c.extras["embedded_timestep"]
        shift, scale = (m.scale_shift_table[None] + embedded[:, None].to(m.scale_shift_table.device)).chunk(2, dim=1)
        x = m.norm_out(c.hidden)
        x = x * (1 + scale.to(x.device)) + shift.to(x.device)
        x = m.proj_out(x).squeeze(1)
        return DiTCarry(hidden=self._unpatchify(x, c.size), attention_kwargs=c.attention_kwargs)

    def stage_modules(self, index: int) -> list[nn.Module]:
        m, name = self.model, self.names[index]
        if name == "input":
            return [x for x in (m.pos_embed, m.adaln_single, m.caption_projection) if x is not None]
        if name == "output":
            table = nn.Module()
            table.scale_shift_table = m.scale_shift_table
            return [m.norm_out, m.proj_out, table]
        return [m.transformer_blocks[int(name.split(".")[1])]]

    def meta_inputs(self, b, h, w, text_length):
        cfg = self.model.config
        added = {"resolution": None, "aspect_ratio": None}
        if self.model.use_additional_conditions:
            added = {"resolution": torch.empty(b, 2, device="meta"), "aspect_ratio": torch.empty(b, 1, device="meta")}
        return torch.empty(b, cfg.in_channels, h, w, device="meta"), {
            "encoder_hidden_states": torch.empty(b, text_length, cfg.caption_channels, device="meta"),
            "timestep": torch.full((b,), 500, device="meta", dtype=torch.long), "added_cond_kwargs": added,
            "encoder_attention_mask": torch.ones(b, text_length, device="meta")}


class FluxChain(DiTChain):
    """`FluxTransformer2DModel` as ``input``, ``double.i`` (dual-stream blocks), ``single.j`` (single-stream
    blocks), ``output``.

    ``start`` takes `FluxTransformer2DModel.forward`'s arguments: packed ``hidden_states`` (B, N, C_in)
    (2x2 patches of the latent), ``encoder_hidden_states`` (B, L, joint_attention_dim),
    ``pooled_projections`` (B, P), ``timestep`` (B,) in [0, 1], ``img_ids`` (N, 3), ``txt_ids`` (L, 3),
    ``guidance`` (B,) (guidance-distilled models). Image and text tokens both cross every cut (the
    single-stream blocks update both), plus the RoPE ids (the rotary embedding is recomputed from them).
    """

    model_class = "FluxTransformer2DModel"
    family = "flux"
    text_updated_per_block = True
    default_text_length = 512  # Flux-dev's T5 length (schnell: 256)

    def _names(self) -> list[str]:
        m = self.model
        return (["input"] + [f"double.{i}" for i in range(len(m.transformer_blocks))]
                + [f"single.{i}" for i in range(len(m.single_transformer_blocks))] + ["output"])

    def start(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
              pooled_projections: torch.Tensor | None = None, timestep: Any = None,
              img_ids: torch.Tensor | None = None, txt_ids: torch.Tensor | None = None,
              guidance: torch.Tensor | None = None, joint_attention_kwargs: dict[str, Any] | None = None,
              **unsupported: Any) -> DiTCarry:
        """The carry before stage 0 (ControlNet residuals and IP-adapters: TypeError)."""
        unsupported.pop("return_dict", None)
        for key in ("controlnet_block_samples", "controlnet_single_block_samples", "controlnet_blocks_repeat"):
            if not unsupported.get(key):
                unsupported.pop(key, None)
        if unsupported:
            raise TypeError(f"{sorted(unsupported)}: not supported by FluxChain (ControlNet residuals)")
        if joint_attention_kwargs and "ip_adapter_image_embeds" in joint_attention_kwargs:
            raise TypeError("joint_attention_kwargs: IP-adapter image embeddings are not supported by FluxChain")
        m = self.model
        x = _check_tensor(hidden_states, "hidden_states", 3)
        if x.shape[-1] != m.config.in_channels:
            raise ValueError(f"hidden_states: expected packed tokens with {m.config.in_channels} values, got {x.shape[-1]}")
        _check_tensor(encoder_hidden_states, "encoder_hidden_states", 3)
        _check_tensor(pooled_projections, "pooled_projections", 2)
        for name, ids in (("img_ids", img_ids), ("txt_ids", txt_ids)):
            if not isinstance(ids, torch.Tensor) or ids.ndim not in (2, 3):
                raise ValueError(f"{name}: expected an (N, 3) tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        if m.config.guidance_embeds and guidance is None:
            raise ValueError("guidance: required by this guidance-distilled Flux model")
        inputs: dict[str, Any] = {"timestep": _as_timestep(timestep, x), "pooled_projections": pooled_projections}
        if guidance is not None:
            inputs["guidance"] = guidance
        return DiTCarry(hidden=x, encoder_hidden_states=encoder_hidden_states,
                        extras={"ids": torch.cat((txt_ids, img_ids), dim=0)}, inputs=inputs,
                        attention_kwargs=joint_attention_kwargs)

    def _input(self, c: DiTCarry) -> DiTCarry:
        m = self.model
        hidden = m.x_embedder(c.hidden)
        timestep = c.inputs["timestep"].to(hidden.dtype) * 1000
        guidance = c.inputs.get("guidance")
        pooled = c.inputs["pooled_projections"]
        if guidance is not None:
            temb = m.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, pooled)
        else:
            temb = m.time_text_embed(timestep, pooled)
        text = m.context_embedder(c.encoder_hidden_states)
        return replace(c, hidden=hidden, encoder_hidden_states=text, temb=temb, inputs={},
                       rotary=m.pos_embed(c.extras["ids"]))

    def _block(self, kind: str, i: int, c: DiTCarry) -> DiTCarry:
        m = self.model
        if "ids" not in c.extras:
            raise ValueError("carry: Flux blocks need the RoPE position ids ('ids')")
        rotary = c.rotary if c.rotary is not None else m.pos_embed(c.extras["ids"])
        block = m.transformer_blocks[i] if kind == "double" else m.single_transformer_blocks[i]
        text, hidden = block(hidden_states=c.hidden, encoder_hidden_states=c.encoder_hidden_states, temb=c.temb,
                             image_rotary_emb=rotary, joint_attention_kwargs=c.attention_kwargs)
        return replace(c, hidden=hidden, encoder_hidden_states=text, rotary=rotary)

    def _output(self, c: DiTCarry) -> DiTCarry:
        m = self.model
        return DiTCarry(hidden=m.proj_out(m.norm_out(c.hidden, c.temb)), attention_kwargs=c.attention_kwargs)

    def stage_modules(self, index: int) -> list[nn.Module]:
        m, name = self.model, self.names[index]
        if name == "input":
            return [m.pos_embed, m.x_embedder, m.time_text_embed, m.context_embedder]
        if name == "output":
            return [m.norm_out, m.proj_out]
        kind, i = name.split(".")
        return [(m.transformer_blocks if kind == "double" else m.single_transformer_blocks)[int(i)]]

    def _default_latent_size(self) -> int:
        return 128  # 1024 px

    def meta_inputs(self, b, h, w, text_length):
        cfg = self.model.config
        n = (h // 2) * (w // 2)
        kwargs: dict[str, Any] = {
            "encoder_hidden_states": torch.empty(b, text_length, cfg.joint_attention_dim, device="meta"),
            "pooled_projections": torch.empty(b, cfg.pooled_projection_dim, device="meta"),
            "timestep": torch.full((b,), 0.5, device="meta"),
            "img_ids": torch.zeros(n, 3, device="meta"), "txt_ids": torch.zeros(text_length, 3, device="meta")}
        if cfg.guidance_embeds:
            kwargs["guidance"] = torch.full((b,), 3.5, device="meta")
        return torch.empty(b, n, cfg.in_channels, device="meta"), kwargs


#: diffusers transformer class name -> its chain.
DIT_CHAINS: dict[str, type[DiTChain]] = {c.model_class: c for c in (SD3Chain, PixArtChain, FluxChain)}


def dit_chain(transformer: nn.Module) -> DiTChain:
    """The chain of a diffusers DiT (`SD3Transformer2DModel`, `PixArtTransformer2DModel`,
    `FluxTransformer2DModel`); TypeError naming the class and the supported ones otherwise."""
    cls = DIT_CHAINS.get(type(transformer).__name__)
    if cls is None:
        raise TypeError(f"transformer: {type(transformer).__name__} has no block chain; supported: {sorted(DIT_CHAINS)}")
    return cls(transformer)
