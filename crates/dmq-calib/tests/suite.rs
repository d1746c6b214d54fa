//! Every integration test of `dmq-calib` in one binary (one link instead of 5
//! keeps the build fast); each module is one file of this directory.

mod calibration;
mod glob_properties;
mod hostile_input;
mod presets;
mod smoothquant;
