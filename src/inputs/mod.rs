//! Reading what `balctl sync -f` is given: files, directories of files, or
//! standard input, each one a *source*. Every object remembers its source,
//! so a sync replaces exactly the objects of the sources it reads.

mod location;
mod toml_file;

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub use self::location::Located;
use crate::{input, state::SyncedObject};

/// One `-f` argument and the objects read from it.
pub struct Source {
    /// An absolute path, or `-` for standard input.
    pub name: String,
    pub objects: Vec<Located<SyncedObject>>,
}

/// Reads every `-f` argument. Directories contribute their `*.toml` files,
/// in name order. Objects must be unique across all of them, by name and by
/// frontend; errors point at file:line:column.
pub fn read(arguments: &[PathBuf]) -> Result<Vec<Source>> {
    let mut sources: Vec<Source> = Vec::new();
    for argument in arguments {
        let name = source_name(argument)?;
        if sources.iter().any(|s| s.name == name) {
            return Err(input!("-f {} is given twice", argument.display()));
        }
        let mut objects = Vec::new();
        for (label, text) in documents(argument)? {
            objects.extend(toml_file::parse(&label, &text)?);
        }
        sources.push(Source { name, objects });
    }
    check_unique(&sources)?;
    Ok(sources)
}

fn source_name(argument: &Path) -> Result<String> {
    if argument == Path::new("-") {
        return Ok("-".to_owned());
    }
    let path = argument.canonicalize().map_err(|e| input!("-f {}: {e}", argument.display()))?;
    Ok(path.display().to_string())
}

/// The documents of one argument, each with the label its errors use.
fn documents(argument: &Path) -> Result<Vec<(String, String)>> {
    if argument == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
        return Ok(vec![("<stdin>".to_owned(), text)]);
    }
    let files = if argument.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(argument)
            .with_context(|| format!("cannot read directory {}", argument.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        files
    } else if argument.extension().is_some_and(|ext| ext == "toml") {
        vec![argument.to_owned()]
    } else {
        return Err(input!(
            "-f {}: balctl reads TOML state files (*.toml); Kubernetes YAML input is not supported yet",
            argument.display()
        ));
    };
    files
        .into_iter()
        .map(|file| {
            let text =
                fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            Ok((file.display().to_string(), text))
        })
        .collect()
}

/// Names and frontends must be unique across everything one sync reads.
fn check_unique(sources: &[Source]) -> Result<()> {
    let mut names: BTreeMap<&str, &Located<SyncedObject>> = BTreeMap::new();
    let mut frontends = BTreeMap::new();
    for object in sources.iter().flat_map(|s| &s.objects) {
        if let Some(first) = names.insert(&object.value.owner, object) {
            return Err(input!(
                "{}: {} is defined twice (first at {})",
                object.location,
                object.value.owner,
                first.location
            ));
        }
        for rule in &object.value.rules {
            if let Some(first) = frontends.insert(rule.frontend, object) {
                return Err(input!(
                    "{}: frontend {} of {} is also a frontend of {} (at {})",
                    object.location,
                    rule.frontend,
                    object.value.owner,
                    first.value.owner,
                    first.location
                ));
            }
        }
    }
    Ok(())
}
