//! Every integration test of `dmq-quant` in one binary (one link instead of 4
//! keeps the build fast); each module is one file of this directory.

#[macro_use]
mod common;
mod conformance;
mod host;
mod hostile_input;
mod properties;
