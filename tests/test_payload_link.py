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
