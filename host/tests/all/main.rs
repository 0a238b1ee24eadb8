//! Integration tests of the `latchkey` host: one binary, one module per area.

mod aws_sdk;
mod cli;
mod hostile;
mod schemes;
mod support;
mod vectors;
