//! Shared by the property tests: the reference model, random command
//! sequences, and the checker that compares the core with the model.
//! Each test binary uses a different part, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod check;
pub mod model;
pub mod ops;
