//! Reading what `balctl sync -f` is given: files, directories of files, or
//! standard input, each one a *source*. Every object remembers its source,
//! so a sync replaces exactly the objects of the sources it reads.
//!
//! Two formats mix freely: TOML state files (`*.toml`) and Kubernetes YAML
//! (`*.yaml`, `*.yml`, or JSON as `kubectl get -o json` prints it). Standard
//! input is told apart by its first lines.

pub mod kube;
mod location;
mod toml_file;

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};

pub use self::location::Located;
use crate::{input, state::SyncedObject};

/// Identifies the text of one input item (a YAML document or `List` entry)
/// and everything else its translation depends on: an xxh3 128-bit hash.
pub type Fingerprint = u128;

/// One `-f` argument and the objects read from it.
pub struct Source {
    /// An absolute path, or `-` for standard input.
    pub name: String,
    pub objects: Vec<Located<Arc<SyncedObject>>>,
}

/// Everything one sync reads.
pub struct Inputs {
    pub sources: Vec<Source>,
    /// What was read but not applied, and why (headless services...).
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Toml,
    Yaml,
}

/// Reads every `-f` argument. Directories contribute their `*.toml`,
/// `*.yaml`, `*.yml` and `*.json` files, in name order. Kubernetes objects
/// of all sources are translated together (a Service's EndpointSlices may
/// be in another file), with `this_node` deciding which endpoints are
/// local; objects of `previous` (those applied before) whose input did not
/// change are kept without parsing it again. Objects must be unique across
/// all sources, by name and by frontend; errors point at file:line:column.
pub fn read(arguments: &[PathBuf], this_node: &str, previous: &[Arc<SyncedObject>]) -> Result<Inputs> {
    let mut names = Vec::new();
    let mut objects: Vec<Vec<Located<SyncedObject>>> = Vec::new();
    let mut kube_objects = Vec::new();
    let mut yaml_files = Vec::new();
    for argument in arguments {
        let name = source_name(argument)?;
        if names.contains(&name) {
            return Err(input!("-f {} is given twice", argument.display()));
        }
        let index = names.len();
        let mut toml_objects = Vec::new();
        if argument == Path::new("-") {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
            match sniff(&text) {
                Format::Toml => toml_objects.extend(toml_file::parse("<stdin>", &text)?),
                Format::Yaml => {
                    kube_objects
                        .extend(kube::read("<stdin>", text.as_bytes())?.into_iter().map(|o| (index, o)));
                }
            }
        }
        for (file, format) in files(argument)? {
            match format {
                Format::Toml => {
                    let label = file.display().to_string();
                    let text = fs::read_to_string(&file).with_context(|| format!("cannot read {label}"))?;
                    toml_objects.extend(toml_file::parse(&label, &text)?);
                }
                Format::Yaml => yaml_files.push(kube::YamlFile { source: index, path: file }),
            }
        }
        names.push(name);
        objects.push(toml_objects);
    }
    let kube = kube::read_files(&yaml_files, &names, previous, this_node)?;
    kube_objects.extend(kube.parsed);
    let translation = kube::translate(kube_objects, this_node);
    for (index, object) in translation.objects {
        objects[index].push(object);
    }
    let mut sources: Vec<Source> = names
        .into_iter()
        .zip(objects)
        .map(|(name, objects)| {
            let objects = objects
                .into_iter()
                .map(|Located { mut value, location }| {
                    value.source.clone_from(&name);
                    Located { value: Arc::new(value), location }
                })
                .collect();
            Source { name, objects }
        })
        .collect();
    for (index, object) in kube.kept {
        sources[index].objects.push(object);
    }
    check_unique(&sources)?;
    Ok(Inputs { sources, notes: translation.notes })
}

fn source_name(argument: &Path) -> Result<String> {
    if argument == Path::new("-") {
        return Ok("-".to_owned());
    }
    let path = source_path(argument)?;
    if !path.exists() {
        return Err(input!("-f {}: no such file or directory", argument.display()));
    }
    Ok(path.display().to_string())
}

/// The absolute path that names a source: its directory resolved, its own
/// name kept. A file that is a symlink (as in a Kubernetes ConfigMap
/// volume, whose links are repointed on every update) keeps its name, so
/// its objects are replaced rather than joined by a second copy.
pub fn source_path(argument: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(argument).map_err(|e| input!("-f {}: {e}", argument.display()))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| input!("-f {}: directory {}: {e}", argument.display(), parent.display()))?
            .join(name)),
        // `/` or a path ending in `..`: nothing to keep unresolved.
        _ => absolute.canonicalize().map_err(|e| input!("-f {}: {e}", argument.display())),
    }
}

/// Whether a file in a directory given with `-f` is read, by its name.
pub fn is_input_file(path: &Path) -> bool {
    format_of(path).is_some()
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "toml" => Some(Format::Toml),
        "yaml" | "yml" | "json" => Some(Format::Yaml),
        _ => None,
    }
}

/// TOML starts with a table header or `key = value`; anything else is
/// taken for YAML (or JSON).
fn sniff(text: &str) -> Format {
    let first = text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#'));
    match first {
        Some(line) if line.starts_with("[[") || (line.starts_with('[') && line.ends_with(']')) => {
            Format::Toml
        }
        Some(line) if line.split_once('=').is_some_and(|(key, _)| !key.contains(':')) => Format::Toml,
        _ => Format::Yaml,
    }
}

/// The files of one argument (none for stdin), with their formats.
fn files(argument: &Path) -> Result<Vec<(PathBuf, Format)>> {
    if argument == Path::new("-") {
        return Ok(Vec::new());
    }
    if argument.is_dir() {
        let mut files: Vec<(PathBuf, Format)> = fs::read_dir(argument)
            .with_context(|| format!("cannot read directory {}", argument.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter_map(|path| format_of(&path).map(|format| (path, format)))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(files);
    }
    match format_of(argument) {
        Some(format) => Ok(vec![(argument.to_owned(), format)]),
        None => Err(input!(
            "-f {}: balctl reads TOML state files (*.toml) and Kubernetes YAML or JSON \
             (*.yaml, *.yml, *.json); name the file accordingly",
            argument.display()
        )),
    }
}

/// Names and frontends must be unique across everything one sync reads.
fn check_unique(sources: &[Source]) -> Result<()> {
    let mut names: HashMap<&str, &Located<Arc<SyncedObject>>> = HashMap::new();
    let mut frontends = HashMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_format_is_sniffed_from_the_first_line() {
        assert_eq!(sniff("# web\n[[service]]\nname = \"web\""), Format::Toml);
        assert_eq!(sniff("name = \"web\"\n"), Format::Toml);
        assert_eq!(sniff("apiVersion: v1\nkind: Service\n"), Format::Yaml);
        assert_eq!(sniff("---\nkind: List\n"), Format::Yaml);
        assert_eq!(sniff("{\"kind\": \"Service\"}"), Format::Yaml);
        assert_eq!(sniff("annotation: \"a=b\"\n"), Format::Yaml);
    }
}
