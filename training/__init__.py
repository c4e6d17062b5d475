"""Lightning recipes for the embedded tiny model (run with ``python -m training.<recipe> fit --config configs/<x>.yaml``).

* `training.vae`: AutoencoderKL (64x64 RGB -> 4x8x8 latents), L1 + MSE + small KL.
* `training.ldm`: UNet + CLIP text encoder, epsilon prediction, SD noise schedule, caption dropout.
* `training.lcm`: latent consistency distillation of the UNet into a step-conditioned student.
* `training.classifier`: attribute classifier (colour, shape, size, position, background).

Each recipe exports safetensors (diffusers folders for the generative models) when fitting ends.
"""
