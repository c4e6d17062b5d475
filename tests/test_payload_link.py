"""Payload size accounting and byte round trips; the Link as a protocol stack."""

import pytest
import torch

from splitldm import Link, LinkStage, Payload
from splitldm.link.stack import SerializeBytes
from splitldm.link.payload import PayloadError, payload_equal


def _payload():
    g = torch.Generator().manual_seed(0)
    return Payload(
        tensors={"latents": torch.randn(2, 4, 8, 8, generator=g), "ids": torch.arange(5, dtype=torch.int16),
                 "gen": torch.zeros(3, dtype=torch.uint8), "half": torch.randn(4, generator=g).half()},
        meta={"step": 3, "prompt": ["a red circle"], "nested": {"x": [1, 2.5, None]}},
        primary=("latents",),
    )


def test_round_trip_is_lossless_and_size_exact():
    p = _payload()
    data = p.to_bytes()
    q = Payload.from_bytes(data)
    assert payload_equal(p, q)
    assert p.num_bits() == 8 * len(data)  # no symbols: the digital part is everything
    assert p.tensor_bits() == (2 * 4 * 8 * 8 * 32) + 5 * 16 + 3 * 8 + 4 * 16
    assert p.tensor_bits(["latents"]) == 2 * 4 * 8 * 8 * 32
    assert p.channel_uses() == 0


def test_symbols_count_as_channel_uses_not_bits():
    p = _payload()
    symbols = torch.randn(2, 100, dtype=torch.complex64)
    q = p.replace(tensors={"symbols": symbols, "gen": p.tensors["gen"]}, primary=("symbols",))
    assert q.channel_uses() == 200
    assert q.tensor_bits() == 3 * 8
    assert q.num_bits() < 8 * len(q.to_bytes())
    assert torch.equal(Payload.from_bytes(q.to_bytes()).tensors["symbols"], symbols)


def test_payload_bad_input():
    with pytest.raises(ValueError, match="primary"):
        Payload({"a": torch.zeros(1)}, primary=("b",))
    with pytest.raises(TypeError, match="primary"):
        Payload({"a": torch.zeros(1)}, primary="a")
    with pytest.raises(TypeError, match="tensors"):
        Payload({"a": [1, 2]})
    with pytest.raises(TypeError, match="meta"):
        Payload({"a": torch.zeros(1)}, meta={"x": object()})
    with pytest.raises(PayloadError):
        Payload.from_bytes(b"garbage that is not safetensors")


class _Scale(LinkStage):
    """Test stage: scales the primary tensor on send, undoes it on receive, logs the order."""

    def __init__(self, factor, log):
        super().__init__()
        self.factor, self.log = factor, log

    def prepare(self, payload, context, generator):
        context.setdefault("prepared", []).append(self.factor)

    def send(self, payload, context, generator):
        self.log.append(("send", self.factor, list(context["prepared"])))
        name = payload.primary[0]
        return payload.replace(tensors=dict(payload.tensors, **{name: payload.tensors[name] * self.factor}))

    def receive(self, payload, context, generator):
        self.log.append(("receive", self.factor))
        name = payload.primary[0]
        return payload.replace(tensors=dict(payload.tensors, **{name: payload.tensors[name] / self.factor}))


def test_link_runs_as_a_stack_and_records_history():
    log = []
    link = Link([_Scale(2.0, log), _Scale(4.0, log), SerializeBytes()])
    p = _payload()
    out = link(p, generator=torch.Generator().manual_seed(0))
    assert [e[:2] for e in log] == [("send", 2.0), ("send", 4.0), ("receive", 4.0), ("receive", 2.0)]
    assert log[0][2] == [2.0, 4.0]  # every stage prepared before anything was sent
    assert torch.equal(out.tensors["latents"], p.tensors["latents"])
    assert [(r.stage, r.direction) for r in out.history] == [
        ("input", "send"), ("_Scale", "send"), ("_Scale", "send"), ("SerializeBytes", "send"),
        ("SerializeBytes", "receive"), ("_Scale", "receive"), ("_Scale", "receive")]
    summary = Link.summary(out)
    assert summary["bits"] == p.num_bits() and summary["channel_uses"] == 0
    assert p.history == []  # the input payload is not modified


def test_ideal_link_and_bad_input():
    p = _payload()
    assert payload_equal(Link()(p), p)
    with pytest.raises(TypeError, match="stages"):
        Link([torch.nn.Identity()])
    with pytest.raises(TypeError, match="payload"):
        Link()(p.to_bytes())
    with pytest.raises(TypeError, match="generator"):
        Link()(p, generator=42)


# ------------------------------------------------------------------ the typed context
def test_link_context_is_typed_and_written_back_into_a_dict():
    from splitldm.link.channels import AWGN
    from splitldm.link.stack import LinkContext

    p = Payload({"z": torch.ones(2, 4, dtype=torch.complex64)}, primary=("z",))
    ctx = LinkContext(snr_db=10.0)
    Link([AWGN(), SerializeBytes()])(p, generator=torch.Generator().manual_seed(0), context=ctx)
    assert ctx.snr_db.tolist() == [10.0, 10.0] and ctx.n0.shape == (2,) and ctx.h is None
    assert ctx.channel_layout == [("z", 4)] and set(ctx.eq_gain) == {"z"} and ctx.serialized_bytes > 0
    a, v = ctx.channel_model("z", p.tensors["z"])
    assert a.shape == v.shape == (2, 4) and a.dtype == torch.complex64 and v.dtype == torch.float32
    # a dict of fields (0.1 callers): converted, and what the stages wrote comes back into it
    d = {"snr_db": 10.0}
    Link([AWGN()])(p, generator=torch.Generator().manual_seed(0), context=d)
    assert {"snr_db", "n0", "channel_layout", "eq_gain", "eq_noise_var"} <= set(d) and "h" not in d
    with pytest.raises(TypeError, match="context"):
        Link()(p, context=5)
    with pytest.raises(ValueError, match="context"):
        LinkContext().channel_model("z", p.tensors["z"])  # no channel ran


def test_link_context_mapping_shim_for_01_stages():
    from splitldm.link.stack import LinkContext

    ctx = LinkContext()
    assert len(ctx) == 0 and "h" not in ctx and ctx.get("h") is None
    with pytest.raises(KeyError):
        ctx["h"]
    ctx["h"] = torch.ones(2, 1)  # a field, through the mapping face
    assert ctx.h is not None and "h" in ctx and list(ctx) == ["h"]
    ctx.setdefault("prepared", []).append(1)  # a key that is not a field goes to extra
    assert ctx.extra == {"prepared": [1]} and ctx["prepared"] == [1] and set(ctx) == {"h", "prepared"}
    del ctx["h"]
    assert ctx.h is None and ctx.pop("prepared") == [1] and len(ctx) == 0
    with pytest.raises(KeyError):
        ctx["extra"] = {}
    assert LinkContext.coerce({"snr_db": 3.0, "x": 1}).extra == {"x": 1}
    with pytest.raises(TypeError, match="context"):
        LinkContext.require({}, "AWGN.send")
    with pytest.raises(TypeError, match="context"):
        SerializeBytes().send(_payload(), {}, torch.Generator())
