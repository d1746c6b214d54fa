//! Every integration test of `dmq-eval` in one binary (one link instead of 4
//! keeps the build fast); each module is one file of this directory.

mod fashion_mnist;
mod harness;
mod hostile_input;
mod metrics;
