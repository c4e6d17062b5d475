"""What runs on the edge server and on the device: model specs and loading, the tokenizer, the denoising
loop (steps [a, b) of any scheduler, exact resume), the denoiser chain (cuts inside one pass), the split
pipeline and FLOP counting."""
