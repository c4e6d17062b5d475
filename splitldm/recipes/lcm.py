"""Recipe (c): latent consistency distillation (LCD) of the tiny UNet into a few-step student.

Follows the LCM-distillation recipe (diffusers' ``train_lcm_distill_sd``): the student is the
teacher's UNet config plus a guidance embedding (``time_cond_proj_dim``), initialised from the
teacher; the target network is an EMA of the student (decay ``ema_decay``); the teacher takes one
classifier-free-guided DDIM step on a ``num_ddim_timesteps``-point grid (skip 1000/50 = 20), with
guidance ``w ~ U[w_min, w_max]`` (pipeline guidance_scale = 1 + w); the loss is a pseudo-Huber
distance between the consistency-function outputs (boundary scalings ``c_skip``, ``c_out`` with
sigma_data 0.5, timestep scaling 10). Sample the result with `LCMScheduler` in 1-8 steps.

When fitting ends the target (EMA) student is exported with the teacher's VAE, text encoder and
tokenizer and an `LCMScheduler` as a diffusers `StableDiffusionPipeline` folder.

    python -m splitldm.recipes.lcm fit --config configs/lcm.yaml
"""

from __future__ import annotations

import copy
import math

import lightning as L
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from splitldm.pipeline.models import load_pipeline, make_scheduler

from splitldm.recipes.ldm import LatentCache, ema_update, export_pipeline
from splitldm.recipes.vae import warmup_cosine


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of guidance weights w (B,), as diffusers' pipelines compute it."""
    w = w.float() * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """LCM's consistency boundary conditions: (c_skip, c_out), each (B,)."""
    s = t.float() * timestep_scaling
    return sigma_data ** 2 / (s ** 2 + sigma_data ** 2), s / (s ** 2 + sigma_data ** 2) ** 0.5


class LCMDistillModule(L.LightningModule):
    def __init__(self, teacher_path: str = "tiny", time_cond_proj_dim: int = 64, lr: float = 2e-4,
                 w_min: float = 1.0, w_max: float = 5.0, num_ddim_timesteps: int = 50, ema_decay: float = 0.95,
                 huber_c: float = 0.001, warmup_steps: int = 50, cache_size: int = 20000,
                 export_dir: str | None = None, analytic_vae: bool = False, teacher_pipeline=None):
        """``teacher_path``: the teacher pipeline: a zoo name (``"tiny"``, the shipped teacher), a diffusers
        folder from recipe (b), or a hub id (`splitldm.pipeline.models.load_pipeline`); or pass
        ``teacher_pipeline`` in Python.
        ``analytic_vae``: the teacher's VAE is `splitldm.recipes.vae_init`'s block-average codec, so latents
        are computed as block averages instead of running the encoder (same values to 1e-3)."""
        super().__init__()
        self.save_hyperparameters(ignore=["teacher_pipeline"])
        pipe = teacher_pipeline or load_pipeline(teacher_path)
        self.tokenizer = pipe.tokenizer
        self.vae = pipe.vae.float().eval().requires_grad_(False)
        self.vae._analytic = analytic_vae
        self.text_encoder = pipe.text_encoder.float().eval().requires_grad_(False)
        self.teacher = pipe.unet.float().eval().requires_grad_(False)
        self.teacher_scheduler_config = dict(pipe.scheduler.config)
        cfg = dict(self.teacher.config)
        cfg["time_cond_proj_dim"] = time_cond_proj_dim
        self.student = UNet2DConditionModel.from_config(cfg)
        missing, unexpected = self.student.load_state_dict(self.teacher.state_dict(), strict=False)
        assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
        torch.nn.init.zeros_(self.student.time_embedding.cond_proj.weight)  # starts as the teacher
        self.student.train()
        self.target = copy.deepcopy(self.student).eval().requires_grad_(False)
        # DDIM solver grid: 19, 39, ..., 999 (skip = 1000 / num_ddim_timesteps)
        ac = torch.as_tensor(_alphas_cumprod(self.teacher_scheduler_config), dtype=torch.float32)
        self.skip = len(ac) // num_ddim_timesteps
        grid = torch.arange(1, num_ddim_timesteps + 1) * self.skip - 1
        self.register_buffer("alphas_cumprod", ac, persistent=False)
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("grid_ac_prev", torch.cat([ac[:1], ac[grid[:-1]]]), persistent=False)
        lat = self.vae.config.sample_size // 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.cache = LatentCache(cache_size, (self.vae.config.latent_channels, lat, lat))

    @torch.no_grad()
    def encode_text(self, captions) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def _x0(self, x_t, eps, t):
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def _consistency(self, unet, x_t, t, w_emb, ehs):
        eps = unet(x_t, t, ehs, timestep_cond=w_emb).sample
        c_skip, c_out = boundary_scalings(t)
        return c_skip.view(-1, 1, 1, 1) * x_t + c_out.view(-1, 1, 1, 1) * self._x0(x_t, eps, t)

    def training_step(self, batch, batch_idx):
        h = self.hparams
        latents = self.cache.sample(self.vae, batch["images"], batch["index"])
        b = len(latents)
        ehs = self.encode_text(batch["captions"])
        uncond = self.encode_text([""] * b)
        idx = torch.randint(0, len(self.grid), (b,), device=self.device)
        t_start = self.grid[idx]
        t_next = (t_start - self.skip).clamp_min(0)
        noise = torch.randn_like(latents)
        ab = self.alphas_cumprod[t_start].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        w = torch.rand(b, device=self.device) * (h.w_max - h.w_min) + h.w_min
        w_emb = guidance_scale_embedding(w, h.time_cond_proj_dim)
        pred = self._consistency(self.student, x_t, t_start, w_emb, ehs)
        with torch.no_grad():
            eps_c, eps_u = self.teacher(torch.cat([x_t, x_t]), torch.cat([t_start, t_start]),
                                        torch.cat([ehs, uncond])).sample.chunk(2)
            wv = w.view(-1, 1, 1, 1)
            eps = eps_c + wv * (eps_c - eps_u)
            x0 = self._x0(x_t, eps_c, t_start) + wv * (self._x0(x_t, eps_c, t_start) - self._x0(x_t, eps_u, t_start))
            ab_prev = self.grid_ac_prev[idx].view(-1, 1, 1, 1)
            x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps  # one DDIM step t_start -> t_next
            target = self._consistency(self.target, x_prev, t_next, w_emb, ehs)
        loss = (torch.sqrt((pred.float() - target.float()) ** 2 + h.huber_c ** 2) - h.huber_c).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        ema_update(self.target, self.student, self.hparams.ema_decay)

    def validation_step(self, batch, batch_idx):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_idx)
            latents = self.vae.encode(batch["images"] * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor
            b = len(latents)
            ehs = self.encode_text(batch["captions"])
            # one-step consistency from t = 999 back to x0: the quantity 1-step sampling relies on
            t = torch.full((b,), len(self.alphas_cumprod) - 1, device=self.device)
            noise = torch.randn_like(latents)
            ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = ab.sqrt() * latents + (1 - ab).sqrt() * noise
            w_emb = guidance_scale_embedding(torch.full((b,), 3.0, device=self.device), self.hparams.time_cond_proj_dim)
            pred = self._consistency(self.target, x_t, t, w_emb, ehs)
        self.log("val/x0_mse_1step", (pred - latents).pow(2).mean(), prog_bar=True, batch_size=b)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.student.parameters(), lr=self.hparams.lr, weight_decay=1e-2)
        total = max(1, self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, self.hparams.warmup_steps, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def pipeline(self) -> StableDiffusionPipeline:
        """The target (EMA) student as a pipeline with an `LCMScheduler`."""
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.target,
            scheduler=make_scheduler("lcm", self.teacher_scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def on_fit_end(self):
        if self.hparams.export_dir and self.trainer.is_global_zero:
            export_pipeline(self.pipeline(), self.hparams.export_dir)


def _alphas_cumprod(cfg: dict) -> torch.Tensor:
    n, b0, b1 = cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"]
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError("teacher_path: only the scaled_linear (SD) schedule is supported")
    betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def main(args: list[str] | None = None, run: bool = True):
    """LightningCLI entry point (``python -m splitldm.recipes.lcm fit --config configs/lcm.yaml``)."""
    from splitldm.recipes.cli import main as cli_main

    return cli_main(LCMDistillModule, args=args, run=run)


if __name__ == "__main__":
    main()
