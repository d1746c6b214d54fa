//! The burn devices compiled into this build, by name.
//!
//! Backends are chosen with Cargo features (`flex`, the default CPU backend; `ndarray`;
//! `wgpu`) and picked at run time by name, so examples and tests never hard-code one.

use burn::tensor::Device;

use crate::error::{QuantError, Result};

/// Names of the backends compiled in, in preference order.
pub fn backend_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    names
}

/// The device of a compiled-in backend: `"flex"`, `"ndarray"` or `"wgpu"`.
///
/// ```
/// let names = dmq_quant::device::backend_names();
/// let device = dmq_quant::device::by_name(names[0])?;
/// assert!(dmq_quant::device::by_name("tpu").is_err());
/// # let _ = device;
/// # Ok::<(), dmq_quant::QuantError>(())
/// ```
pub fn by_name(name: &str) -> Result<Device> {
    match name {
        #[cfg(feature = "flex")]
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)] // still a supported, tested backend of dmq
        "ndarray" => Ok(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        other => Err(QuantError::Unsupported(format!(
            "backend '{other}' is not compiled in (available: {}); enable its Cargo feature",
            backend_names().join(", ")
        ))),
    }
}

/// The default device: the first compiled-in backend (flex when enabled).
pub fn default_device() -> Result<Device> {
    let names = backend_names();
    let first = names.first().ok_or_else(|| {
        QuantError::Unsupported("no backend compiled in: enable flex, ndarray or wgpu".into())
    })?;
    by_name(first)
}

/// Every compiled-in backend with its device (for conformance suites and benches).
pub fn all_devices() -> Vec<(&'static str, Device)> {
    backend_names()
        .into_iter()
        .filter_map(|n| by_name(n).ok().map(|d| (n, d)))
        .collect()
}
