//! `eval --plot`: mean faithfulness curves per method as PNG plots.

use crate::eval::report::Report;
use anyhow::{bail, Result};
use std::path::Path;

pub(crate) fn write_plots(_dir: &Path, _reports: &[Report]) -> Result<()> {
    bail!("--plot is not implemented yet")
}
