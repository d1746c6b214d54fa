//! Every integration test of `dmq-finetune` in one binary (one link instead of 3
//! keeps the build fast); each module is one file of this directory.

#[macro_use]
mod common;
mod binarydm;
mod efficientdm;
mod quest;
