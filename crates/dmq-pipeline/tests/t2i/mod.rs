//! Text-to-image: the CLIP tokenizer against transformers' ids, and the whole latent pipeline
//! against diffusers' `StableDiffusionPipeline`.

mod pipeline;
mod tokenizer;
