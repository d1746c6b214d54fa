//! Every integration test of `dmq-models` in one binary (one link instead of 7
//! keeps the build fast); each module is one file of this directory.

mod dit_parity;
mod hostile_input;
mod sampling_and_training;
mod schedulers;
mod structure;
mod t2i;
mod unet_parity;
