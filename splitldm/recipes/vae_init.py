"""Analytic initialisation of an `AutoencoderKL`: encoder = 8x8 average pooling, decoder = nearest upsampling.

Why: on a shared CPU a VAE trained from scratch did not get past blurry backgrounds in the time
available (230 steps: 16 dB PSNR, no shapes). These weights make the standard diffusers
architecture start as an exact, known codec: latent channels 0-2 are the RGB means of each 8x8
block (in [-1, 1]), channel 3 is zero, the posterior std is e^-5; the decoder paints each block
with its mean. Recipe (a) then trains the decoder (encoder frozen) to sharpen the blocks.

How: every resnet's ``conv2`` and every attention ``to_out`` are zero, so those blocks are
identities (and still trainable, ReZero-style); 1x1 shortcuts, up/down-sampling convs copy
channels (down: 2x2 average, up: centre tap after nearest x2). Group norms cannot be made linear
directly, so each group carries ``(c, -c, K, -K)`` (mean exactly 0, variance dominated by the
constant K): normalising is then a fixed gain up to a relative error below 1e-3.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

K = 20.0
#: channel -> (colour index 0..2, sign) or "K" / "-K"; 16 channels, groups of 4: (c, -c, K, -K) x 3 + zeros
LAYOUT = {0: (0, 1), 1: (0, -1), 2: "K", 3: "-K", 4: (1, 1), 5: (1, -1), 6: "K", 7: "-K",
          8: (2, 1), 9: (2, -1), 10: "K", 11: "-K"}
_BETA = 16.0  # SiLU(y) = y (1 - 1e-7) for y ~ 16 +- 0.1: a linear unit


def _zero(m):
    torch.nn.init.zeros_(m.weight)
    if m.bias is not None:
        torch.nn.init.zeros_(m.bias)


def _copy_1x1(conv, n=12):
    _zero(conv)
    for c in range(n):
        conv.weight[c, c, conv.weight.shape[2] // 2, conv.weight.shape[3] // 2] = 1.0


def _identity_blocks(module):
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for m in module.modules():
        if isinstance(m, ResnetBlock2D):
            _zero(m.conv2)
            if m.conv_shortcut is not None:
                _copy_1x1(m.conv_shortcut)
        elif isinstance(m, Attention):
            _zero(m.to_out[0])


def _layout_conv(conv, colour_weight, k_bias=True):
    """conv (in -> >=16) writing LAYOUT: colour channels from ``colour_weight(c)`` (a kernel), K constants as bias."""
    _zero(conv)
    for ch, what in LAYOUT.items():
        if what == "K":
            conv.bias[ch] = K
        elif what == "-K":
            conv.bias[ch] = -K
        else:
            c, sign = what
            conv.weight[ch] = sign * colour_weight(c)


def _norm_out(norm, group_size):
    torch.nn.init.zeros_(norm.weight)
    torch.nn.init.zeros_(norm.bias)
    for ch, what in LAYOUT.items():
        if isinstance(what, tuple) and what[1] == 1:
            norm.weight[ch] = 1.0
            norm.bias[ch] = _BETA


@torch.no_grad()
def analytic_init(vae: AutoencoderKL, logvar: float = -10.0) -> AutoencoderKL:
    """Overwrite ``vae``'s weights with the block-average codec (see module doc); returns ``vae``."""
    cfg = vae.config
    ch = cfg.block_out_channels
    if cfg.latent_channels < 3 or min(ch) < 16 or any(c % cfg.norm_num_groups for c in ch):
        raise ValueError("vae: analytic_init needs >= 3 latent channels and >= 16 channels per block")
    if ch[0] // cfg.norm_num_groups != 4 or ch[-1] // cfg.norm_num_groups != 16:
        raise ValueError("vae: analytic_init needs groups of 4 channels at the image end and 16 at the latent end")
    enc, dec = vae.encoder, vae.decoder
    _identity_blocks(enc)
    _identity_blocks(dec)
    # encoder: conv_in writes the layout from RGB (centre tap)
    def rgb_tap(c, cin=3):
        w = torch.zeros(cin, 3, 3)
        w[c, 1, 1] = 1.0
        return w
    _layout_conv(enc.conv_in, rgb_tap)
    for blk in enc.down_blocks:
        for ds in blk.downsamplers or []:
            _zero(ds.conv)
            for c in range(12):  # pad (0,1,0,1), stride 2: taps [0:2, 0:2] average the 2x2 block
                ds.conv.weight[c, c, 0:2, 0:2] = 0.25
            for c in (2, 6, 10):
                pass  # constants stay constant: the average of K is K
    # encoder norm_out: groups of 16 channels; mean 0, std = sqrt((2 sum c^2 + 6 K^2) / 16) ~ K sqrt(6/16)
    _norm_out(enc.conv_norm_out, 16)
    gain_enc = K * (6 / 16) ** 0.5
    _zero(enc.conv_out)
    lc = cfg.latent_channels
    for c in range(3):
        src = {0: 0, 1: 4, 2: 8}[c]
        enc.conv_out.weight[c, src, 1, 1] = gain_enc
        enc.conv_out.bias[c] = -_BETA * gain_enc
    enc.conv_out.bias[lc:] = logvar
    _copy_1x1(vae.quant_conv, 2 * lc)
    # decoder: post_quant_conv identity, conv_in writes the layout from latents 0..2
    _copy_1x1(vae.post_quant_conv, lc)
    _layout_conv(dec.conv_in, lambda c: rgb_tap(c, lc))
    for blk in dec.up_blocks:
        for us in blk.upsamplers or []:
            _copy_1x1(us.conv)
    # decoder norm_out: groups of 4 (c, -c, K, -K): std ~ K / sqrt(2)
    _norm_out(dec.conv_norm_out, 4)
    gain_dec = K / 2 ** 0.5
    _zero(dec.conv_out)
    for c in range(3):
        src = {0: 0, 1: 4, 2: 8}[c]
        dec.conv_out.weight[c, src, 1, 1] = gain_dec
        dec.conv_out.bias[c] = -_BETA * gain_dec
    return vae
