//! [`AnyDenoiser`]: one model type for every architecture dmq loads, chosen by the
//! `_class_name` of a diffusers `config.json`.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use dmq_models::dit::{DiT, DiTConfig};
use dmq_models::layers::{LayerMut, LayerRef};
use dmq_models::unet::{UNet2DModel, UNetConfig};
use dmq_models::unet_cond::{UNet2DConditionConfig, UNet2DConditionModel};
use dmq_models::{Denoiser, DenoiserInfo, ForwardCtx};
use serde_json::Value;

use crate::error::{PipelineError, Result, file_err};

/// diffusers `_class_name` of the UNet.
pub const UNET_CLASS: &str = "UNet2DModel";
/// diffusers `_class_name` of the DiT.
pub const DIT_CLASS: &str = "DiTTransformer2DModel";
/// diffusers `_class_name` of the text-conditional UNet.
pub const UNET_COND_CLASS: &str = "UNet2DConditionModel";

/// A denoiser of any architecture dmq supports; every algorithm, sampler and metric takes
/// it as it takes the concrete models.
// One model per process: the size difference of the variants costs nothing, and boxing
// them would take the enum out of burn's `Module` derive.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AnyDenoiser {
    /// diffusers `UNet2DModel`.
    UNet(UNet2DModel),
    /// diffusers `DiTTransformer2DModel`.
    DiT(DiT),
    /// diffusers `UNet2DConditionModel` (text-conditional: calibrate it on prompt
    /// embeddings, [`dmq_calib::CalibSet::record_with`]).
    UNetCond(UNet2DConditionModel),
}

impl AnyDenoiser {
    /// The diffusers `_class_name` of the model.
    pub fn class_name(&self) -> &'static str {
        match self {
            Self::UNet(_) => UNET_CLASS,
            Self::DiT(_) => DIT_CLASS,
            Self::UNetCond(_) => UNET_COND_CLASS,
        }
    }

    /// The model's `config.json` as diffusers writes it.
    pub fn config_json(&self) -> Result<Value> {
        Ok(match self {
            Self::UNet(m) => serde_json::from_str(&m.config().to_json_string()?)
                .map_err(|e| dmq_models::ModelError::Config(e.to_string()))?,
            Self::DiT(m) => m.config().to_json(),
            Self::UNetCond(m) => serde_json::from_str(&m.config().to_json_string()?)
                .map_err(|e| dmq_models::ModelError::Config(e.to_string()))?,
        })
    }

    /// A model with fresh (random) weights built from a parsed `config.json`; `origin` names
    /// the file in errors.
    pub fn from_config_json(config: &Value, origin: &Path, device: &Device) -> Result<Self> {
        let class = config
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                file_err(
                    origin,
                    "_class_name",
                    "missing: dmq needs the diffusers class of the model",
                )
            })?;
        match class {
            UNET_CLASS => {
                let cfg = UNetConfig::from_json(config)?;
                Ok(Self::UNet(UNet2DModel::new(&cfg, device)?))
            }
            DIT_CLASS => {
                let cfg = DiTConfig::from_json_value(config)?;
                Ok(Self::DiT(DiT::new(&cfg, device)?))
            }
            UNET_COND_CLASS => {
                let cfg = UNet2DConditionConfig::from_json(config)?;
                Ok(Self::UNetCond(cfg.init(device)?))
            }
            other => Err(PipelineError::UnsupportedModel {
                path: origin.to_path_buf(),
                class: other.to_string(),
            }),
        }
    }

    /// Loads a diffusers model directory (`config.json` + `diffusion_pytorch_model.safetensors`),
    /// dispatching on `_class_name`; loading is strict (see the models' `from_pretrained`).
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(file_err(dir, "model directory", "not a directory"));
        }
        let config = dmq_models::io::read_config(dir)?;
        let origin = dir.join("config.json");
        match config.get("_class_name").and_then(Value::as_str) {
            Some(UNET_CLASS) => Ok(Self::UNet(UNet2DModel::from_pretrained(dir, device)?)),
            Some(DIT_CLASS) => Ok(Self::DiT(DiT::from_pretrained(dir, device)?)),
            Some(UNET_COND_CLASS) => Ok(Self::UNetCond(UNet2DConditionModel::load(dir, device)?)),
            _ => Self::from_config_json(&config, &origin, device),
        }
    }

    /// The FP parameters as safetensors bytes under their diffusers keys (the variant name
    /// the enum adds to module paths is not part of them).
    pub fn weights_to_bytes(&self) -> Result<Vec<u8>> {
        Ok(match self {
            Self::UNet(m) => dmq_models::io::weights_to_bytes(m, Default::default())?,
            Self::DiT(m) => dmq_models::io::weights_to_bytes(m, Default::default())?,
            Self::UNetCond(m) => dmq_models::io::weights_to_bytes(m, Default::default())?,
        })
    }

    /// Loads every parameter from safetensors `bytes` under diffusers keys, strictly
    /// (missing, unused or misshapen tensors are errors naming `origin`).
    pub fn load_weights_bytes(self, bytes: &[u8], origin: &Path, device: &Device) -> Result<Self> {
        use dmq_models::io::load_weights_from_bytes as load;
        Ok(match self {
            Self::UNet(m) => Self::UNet(load(m, bytes, origin, device)?),
            Self::DiT(m) => Self::DiT(load(m, bytes, origin, device)?),
            Self::UNetCond(m) => Self::UNetCond(load(m, bytes, origin, device)?),
        })
    }

    /// Writes the model as a diffusers directory (FP weights; quantizers are not written).
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        match self {
            Self::UNet(m) => m.save_pretrained(dir)?,
            Self::DiT(m) => m.save_pretrained(dir)?,
            Self::UNetCond(m) => m.save_pretrained(dir)?,
        }
        Ok(())
    }
}

impl Denoiser for AnyDenoiser {
    fn forward(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        class: Option<dmq_models::Conditioning>,
        ctx: &ForwardCtx<'_>,
    ) -> dmq_models::Result<Tensor<4>> {
        match self {
            Self::UNet(m) => m.forward(x, t, class, ctx),
            Self::DiT(m) => m.forward(x, t, class, ctx),
            Self::UNetCond(m) => Denoiser::forward(m, x, t, class, ctx),
        }
    }

    fn info(&self) -> DenoiserInfo {
        match self {
            Self::UNet(m) => m.info(),
            Self::DiT(m) => m.info(),
            Self::UNetCond(m) => m.info(),
        }
    }

    fn for_each_layer(&self, f: &mut dyn FnMut(LayerRef<'_>)) {
        match self {
            Self::UNet(m) => m.for_each_layer(f),
            Self::DiT(m) => m.for_each_layer(f),
            Self::UNetCond(m) => m.for_each_layer(f),
        }
    }

    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(LayerMut<'_>)) {
        match self {
            Self::UNet(m) => m.for_each_layer_mut(f),
            Self::DiT(m) => m.for_each_layer_mut(f),
            Self::UNetCond(m) => m.for_each_layer_mut(f),
        }
    }

    fn structure(&self) -> dmq_models::Structure {
        match self {
            Self::UNet(m) => m.structure(),
            Self::DiT(m) => m.structure(),
            Self::UNetCond(m) => m.structure(),
        }
    }
}
