//! Every integration test of `dmq-pipeline` in one binary (one link instead of 2
//! keeps the build fast); each module is one file of this directory.

mod pipeline;
mod t2i;
