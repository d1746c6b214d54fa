//! The text-to-image models against their reference implementations, in one test binary (one
//! link instead of three keeps CI fast): the CLIP text encoder (transformers), the VAE and the
//! text-conditional UNet (diffusers).

#[path = "t2i/clip.rs"]
mod clip;
#[path = "t2i/unet_cond.rs"]
mod unet_cond;
#[path = "t2i/vae.rs"]
mod vae;
