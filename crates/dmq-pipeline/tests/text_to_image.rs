//! Text-to-image in one test binary (one link instead of two keeps CI fast): the CLIP
//! tokenizer against transformers' ids, and the whole latent pipeline against diffusers'
//! `StableDiffusionPipeline`.

#[path = "t2i/pipeline.rs"]
mod pipeline;
#[path = "t2i/tokenizer.rs"]
mod tokenizer;
