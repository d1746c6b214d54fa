//! Every integration test of `dmq-infer` in one binary (one link instead of 2
//! keeps the build fast); each module is one file of this directory.

mod hostile_input;
mod integer_path;
