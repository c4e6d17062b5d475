"""Measuring a split: the embedded data set, metrics (PSNR, SSIM, FID, adherence), quality tables, SNR
sweeps, the demo and plotting."""
