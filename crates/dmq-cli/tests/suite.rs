//! Every integration test of `dmq-cli` in one binary (one link instead of 2
//! keeps the build fast); each module is one file of this directory.

mod cli;
mod python_reader;
