//! Typed reading of YAML nodes, with errors that say which file, line,
//! column, object and field was wrong: `web.yaml:12:15: Service
//! default/web: spec.ports[0].port: 70000 is out of range (1-65535)`.

use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::Result;

use super::yaml::{Node, Value};
use crate::{error::excerpt, input};

/// Where a field is inside its object, e.g. `spec.ports[0].port`; built on
/// the stack as the reader descends, and spelled out only for an error.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The object being read, for messages: its file and what it is.
pub struct Object<'a> {
    pub file: &'a str,
    /// e.g. `Service default/web`; set once the name is known.
    pub what: String,
}

/// A field's place in its file and object, kept after parsing for errors
/// that only translation finds (a policy port without a partner): the text
/// that starts every message about it.
#[derive(Clone, Debug)]
pub struct FieldRef {
    prefix: String,
}

impl FieldRef {
    pub fn error(&self, message: impl fmt::Display) -> anyhow::Error {
        input!("{}: {message}", self.prefix)
    }
}

/// A node of the object and the path to it.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    pub node: &'a Node,
    path: Path<'a>,
}

impl<'a> Field<'a> {
    pub const fn root(node: &'a Node) -> Self {
        Self { node, path: Path::Root }
    }

    /// An error about this field.
    pub fn error(&self, object: &Object<'_>, message: impl fmt::Display) -> anyhow::Error {
        self.reference(object).error(message)
    }

    /// Where this field is, for errors found after parsing.
    pub fn reference(&self, object: &Object<'_>) -> FieldRef {
        let place = format!("{}:{}:{}", object.file, self.node.line, self.node.column);
        // `what` holds the object's name, which may be anything until checked.
        let what = excerpt(&object.what);
        let prefix = match self.path {
            Path::Root => format!("{place}: {what}"),
            path => format!("{place}: {what}: {path}"),
        };
        FieldRef { prefix }
    }

    /// The field `key`, if present and not null.
    pub fn get<'b>(&'b self, key: &'b str) -> Option<Field<'b>> {
        self.node
            .get(key)
            .filter(|n| !n.is_null())
            .map(|node| Field { node, path: Path::Key(&self.path, key) })
    }

    pub fn require<'b>(&'b self, object: &Object<'_>, key: &'b str) -> Result<Field<'b>> {
        self.get(key).ok_or_else(|| self.error(object, format!("missing field `{key}`")))
    }

    /// The entries of a mapping, each with its key in the path.
    pub fn entries(&self, object: &Object<'_>) -> Result<impl Iterator<Item = (&'a str, Field<'_>)>> {
        match &self.node.value {
            Value::Mapping(entries) => Ok(entries
                .iter()
                .map(move |(key, node)| (key.as_str(), Field { node, path: Path::Key(&self.path, key) }))),
            _ => Err(self.error(object, "expected a mapping")),
        }
    }

    /// The items of a sequence, each with its index in the path.
    pub fn items(&self, object: &Object<'_>) -> Result<impl ExactSizeIterator<Item = Field<'_>>> {
        match &self.node.value {
            Value::Sequence(items) => Ok(items
                .iter()
                .enumerate()
                .map(move |(i, node)| Field { node, path: Path::Index(&self.path, i) })),
            _ => Err(self.error(object, "expected a list")),
        }
    }

    /// `read` of every item of the list, in a Vec of just their number:
    /// collecting `Result`s leaves room for four at least, and a sync of
    /// 100,000 services holds hundreds of thousands of these lists.
    pub fn map_items<T>(
        &self,
        object: &Object<'_>,
        mut read: impl FnMut(Field<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let items = self.items(object)?;
        let mut read_items = Vec::with_capacity(items.len());
        for item in items {
            read_items.push(read(item)?);
        }
        Ok(read_items)
    }

    pub fn str(&self, object: &Object<'_>) -> Result<&'a str> {
        match &self.node.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.error(object, "expected a string")),
        }
    }

    /// A plain (unquoted) scalar of type `T`, e.g. an integer.
    fn plain<T: FromStr>(&self, object: &Object<'_>, expected: &str) -> Result<T> {
        match &self.node.value {
            Value::Scalar { text, plain: true } => text
                .parse()
                .map_err(|_| self.error(object, format!("expected {expected}, found `{}`", excerpt(text)))),
            Value::Scalar { text, plain: false } => {
                Err(self
                    .error(object, format!("expected {expected}, found the string \"{}\"", excerpt(text))))
            }
            _ => Err(self.error(object, format!("expected {expected}"))),
        }
    }

    pub fn int(&self, object: &Object<'_>) -> Result<i64> {
        self.plain(object, "an integer")
    }

    pub fn bool(&self, object: &Object<'_>) -> Result<bool> {
        self.plain(object, "true or false")
    }

    pub fn port(&self, object: &Object<'_>) -> Result<u16> {
        let port = self.int(object)?;
        match u16::try_from(port) {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(self.error(object, format!("port {port} is out of range (1-65535)"))),
        }
    }

    pub fn ip(&self, object: &Object<'_>) -> Result<IpAddr> {
        let text = self.str(object)?;
        let ip: IpAddr = text
            .parse()
            .map_err(|_| self.error(object, format!("`{}` is not a valid IP address", excerpt(text))))?;
        crate::model::check_address(ip).map_err(|e| self.error(object, e))?;
        Ok(ip.to_canonical())
    }

    /// One of `choices`, spelled exactly as Kubernetes spells it.
    pub fn one_of<'c>(&self, object: &Object<'_>, choices: &[&'c str]) -> Result<&'c str> {
        let text = self.str(object)?;
        choices.iter().find(|c| **c == text).copied().ok_or_else(|| {
            self.error(object, format!("`{}` is not one of {}", excerpt(text), choices.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::kube::yaml::for_each_object;

    fn read(text: &str, check: impl Fn(Field<'_>, &Object<'_>) -> Result<()>) -> String {
        let mut message = String::new();
        for_each_object("f.yaml", text.as_bytes(), 1, |node| {
            let object = Object { file: "f.yaml", what: "Service default/web".into() };
            if let Err(err) = check(Field::root(&node), &object) {
                message = err.to_string();
            }
            Ok(())
        })
        .unwrap();
        message
    }

    #[test]
    fn errors_name_file_line_object_and_path() {
        let text = "spec:\n  ports:\n  - port: 80\n  - port: 70000\n    name: \"x\"\n";
        let message = read(text, |root, object| {
            for port in root.require(object, "spec")?.require(object, "ports")?.items(object)? {
                port.require(object, "port")?.port(object)?;
            }
            Ok(())
        });
        assert_eq!(
            message,
            "f.yaml:4:11: Service default/web: spec.ports[1].port: port 70000 is out of range (1-65535)"
        );
        let message =
            read(text, |root, object| root.require(object, "spec")?.require(object, "clusterIP").map(drop));
        assert_eq!(message, "f.yaml:2:3: Service default/web: spec: missing field `clusterIP`");
    }

    #[test]
    fn quoted_numbers_are_strings() {
        let message =
            read("port: \"80\"\n", |root, object| root.require(object, "port")?.port(object).map(drop));
        assert!(message.contains("found the string \"80\""), "{message}");
    }
}
