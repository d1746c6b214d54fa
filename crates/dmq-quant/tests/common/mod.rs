//! Shared helpers for the dmq-quant test suites.
#![allow(dead_code)]

use burn::tensor::{Device, Tensor, TensorData};

/// Instantiates a conformance suite once per compiled-in backend: the suite's functions take
/// `&Device` and this macro emits `mod flex { #[test] fn name() { super::name(&device) } }`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "flex")]
        mod flex {
            $( #[test] fn $name() { super::$name(&burn::tensor::Device::flex()) } )*
        }
        #[cfg(feature = "ndarray")]
        mod ndarray {
            $( #[test] #[allow(deprecated)] fn $name() { super::$name(&burn::tensor::Device::ndarray()) } )*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $( #[test] fn $name() {
                super::$name(&burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
            } )*
        }
    };
}

pub fn t1(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

pub fn tn<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Max |a − b| with a tolerance check; panics with the worst index.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let (mut worst, mut at) = (0.0f32, 0);
    for i in 0..a.len() {
        let d = (a[i] - b[i]).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol,
        "{what}: max |diff| {worst} at {at} ({} vs {}) > {tol}",
        a[at],
        b[at]
    );
}
