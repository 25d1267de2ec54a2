use std::io::Write as _;

use anyhow::Result;

use crate::{cli::CompletionsArgs, docs};

pub fn run(args: &CompletionsArgs) -> Result<()> {
    std::io::stdout().lock().write_all(&docs::completion(args.shell))?;
    Ok(())
}
