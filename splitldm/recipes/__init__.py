"""Lightning recipes for the embedded tiny model; each runs as
``python -m splitldm.recipes.<recipe> fit --config configs/<recipe>.yaml`` (LightningCLI; every
``--trainer.*`` flag works, e.g. ``--trainer.devices 2 --trainer.strategy ddp``).

* `splitldm.recipes.vae`: AutoencoderKL (64x64 RGB -> 4x8x8 latents), L1 + MSE + small KL.
* `splitldm.recipes.ldm`: UNet + CLIP text encoder, epsilon prediction, SD noise schedule, caption dropout.
* `splitldm.recipes.lcm`: latent consistency distillation of the UNet into a step-conditioned student.
* `splitldm.recipes.classifier`: attribute classifier (colour, shape, size, position, background).
* `splitldm.recipes.codec`: the seed codec (`splitldm.link.codec.SeedCodec`) on latents the pipeline makes.
* `splitldm.recipes.codec_bank`: a codec bank for a cut inside the UNet pass.
* `splitldm.recipes.merge_decoder`: the merge-aware VAE decoder (`splitldm.pipeline.merge_decoder`).
* `splitldm.recipes.entropy`: the learned entropy model (`splitldm.link.entropy_model`).

Each recipe exports safetensors when fitting ends (diffusers folders for the generative models,
``save_pretrained`` folders for ours) to ``export_dir``: under ``runs/`` in every shipped config, so a
run never overwrites the shipped models in ``splitldm/checkpoints/`` (copy an export there by hand).
Shipped models are named by their `splitldm.zoo` names in the configs (``teacher_path: tiny``).

``--ckpt_path <file | last>`` resumes a run: with the same configuration it ends bit for bit where an
uninterrupted run ends (data order, random states, optimizer and LR schedule restored); ``--model.*`` /
``--data.*`` values that differ from the checkpoint's are refused, and the export goes where the resumed
run said (`splitldm.recipes.resume`; docs/guides/determinism.md).
"""
