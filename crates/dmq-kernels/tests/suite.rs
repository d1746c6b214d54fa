//! Every integration test of `dmq-kernels` in one binary (one link instead of 9
//! keeps the build fast); each module is one file of this directory.

#[macro_use]
mod common;
mod act_quant;
mod binary;
mod conv;
mod errors;
mod f32_path;
mod gpu;
mod int8;
mod w4;
mod xnor;
