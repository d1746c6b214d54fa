//! Every integration test of `dmq-search` in one binary (one link instead of 3
//! keeps the build fast); each module is one file of this directory.

mod hostile_input;
mod search;
mod supernet;
