//! The text-to-image models against their reference implementations: the CLIP text encoder
//! (transformers), the VAE and the text-conditional UNet (diffusers).

mod clip;
mod unet_cond;
mod vae;
