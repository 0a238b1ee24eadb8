//! Integration tests of the `latchkey` host: one binary, one module per area.

mod cli;
mod hostile;
mod schemes;
mod support;
mod vectors;
