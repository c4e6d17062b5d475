"""Per-family adapters: what differs between SD, SDXL, SD3, PixArt and Flux, in one small file each.

The denoising loop (`splitldm.pipeline.sampling`), the payload, the link and `SplitPipeline` are
shared; a `Family` says, for one diffusers pipeline family, what conditioning crosses (``encode`` /
``condition_shapes``), how the schedule is set up (``set_timesteps``: Flux's dynamic shift from the
image token count, SD3's flow matching), how the initial latents are drawn and laid out
(``prepare_latents`` / ``latent_shape``: Flux packs 2 x 2 patches), which inputs either side
recomputes (``derived``: SDXL's ``add_time_ids``, Flux's RoPE ids and guidance vector), how the
denoiser is called and guided (``model_kwargs`` / ``guide`` / ``predict``), the scheduler step
(``step``) and decoding (``decode``: PixArt's resolution binning, SD3/Flux's shift factor).

| family (``name``) | pipeline classes | denoiser | schedulers tested |
|---|---|---|---|
| ``sd`` | StableDiffusionPipeline | UNet | models.SCHEDULERS |
| ``sdxl`` | StableDiffusionXLPipeline | UNet | models.SCHEDULERS |
| ``sd3`` | StableDiffusion3Pipeline | MMDiT | models.FLOW_SCHEDULERS |
| ``pixart`` | PixArtAlphaPipeline, PixArtSigmaPipeline | DiT | models.SCHEDULERS |
| ``flux`` | FluxPipeline | MMDiT | models.FLOW_SCHEDULERS |

Adding a family
---------------
1. Read the family's ``__call__`` in diffusers and note, in order: prompt encoding, timesteps,
   latents, the denoiser call inside the loop, guidance, the scheduler step, decoding.
2. Create ``splitldm/pipeline/families/<name>.py`` with a `Family` subclass decorated with
   ``@register``: set ``name``, ``pipeline_classes`` (diffusers class names), ``denoiser_name``,
   ``text_encoder_names``, ``options`` (family-specific call arguments with their defaults),
   ``default_guidance``; implement ``encode``, ``condition_shapes``, ``set_timesteps``,
   ``model_kwargs`` and ``decode``; override ``prepare_latents`` / ``latent_shape`` / ``derived`` /
   ``guide`` / ``predict`` / ``step`` where the family differs from the DDPM-type default. Call the
   pipeline's own helpers (``pipe.encode_prompt``, ``pipe.prepare_latents``, ...) so the arithmetic
   is the pipeline's, bit for bit.
3. Import the module below (registration order is lookup order; subclasses before bases).
4. Add a tiny seeded builder to ``splitldm.pipeline.models.TINY_FAMILIES`` and a row to
   ``tests/test_families.py``'s equivalence table: split at every step equals ``pipe(...)``.
"""

from splitldm.pipeline.families.base import FAMILIES, Family, family_of, register, step_kwargs, supported_pipelines
from splitldm.pipeline.families import sd, sdxl, sd3, pixart, flux  # noqa: F401,E402  (registration)

__all__ = ["FAMILIES", "Family", "family_of", "register", "step_kwargs", "supported_pipelines"]
