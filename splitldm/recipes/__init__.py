"""Lightning recipes for the embedded tiny model (run with ``python -m splitldm.recipes.<recipe> fit --config configs/<x>.yaml``).

* `splitldm.recipes.vae`: AutoencoderKL (64x64 RGB -> 4x8x8 latents), L1 + MSE + small KL.
* `splitldm.recipes.ldm`: UNet + CLIP text encoder, epsilon prediction, SD noise schedule, caption dropout.
* `splitldm.recipes.lcm`: latent consistency distillation of the UNet into a step-conditioned student.
* `splitldm.recipes.classifier`: attribute classifier (colour, shape, size, position, background).

Each recipe exports safetensors (diffusers folders for the generative models) when fitting ends.
"""
