//! `-o jsonpath=TEMPLATE`: kubectl's JSONPath templates
//! (https://kubernetes.io/docs/reference/kubectl/jsonpath/). The template
//! is text with actions in braces: `{.path}` prints what the path selects
//! (several results space-separated), `{range .path}...{end}` repeats its
//! body for each result, `{"\n"}` prints a quoted string, `{@}` the current
//! value. The paths themselves are RFC 9535 JSONPath, evaluated by
//! jsonpath-rust; this module parses the template around them and turns
//! kubectl's forms into RFC 9535's: `.a` and `@.a` are relative to the
//! current value (the document, or the item a `range` is at), `$.a` to the
//! document.

use std::fmt::{self, Write as _};

use jsonpath_rust::{
    parser::{model::JpQuery, parse_json_path},
    query::js_path_process,
};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Print(Path),
    Range(Path, Vec<Node>),
}

/// A path as the template wrote it, and compiled.
#[derive(Clone, Debug, PartialEq)]
struct Path {
    /// `$...`: from the document, else from the current value.
    from_root: bool,
    query: JpQuery,
}

/// A template that does not parse: what is wrong, and at which character
/// (1-based) of the template.
#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jsonpath template, at character {}: {}", self.at, self.message)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut parser = Parser { template, at: 0 };
        let (nodes, end) = parser.nodes()?;
        if let Some(at) = end {
            return Err(TemplateError { at, message: "{end} without a {range} before it".into() });
        }
        Ok(Self { nodes })
    }

    /// The template filled in from `document`.
    pub fn render(&self, document: &Value) -> String {
        let mut out = String::new();
        render(&self.nodes, document, document, &mut out);
        out
    }
}

fn render(nodes: &[Node], root: &Value, current: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Print(path) => {
                for (i, value) in path.select(root, current).into_iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    print_value(value, out);
                }
            }
            Node::Range(path, body) => {
                for item in path.select(root, current) {
                    // A range over one array (`{range .items}`) walks its items, as kubectl's does.
                    match item {
                        Value::Array(items) => items.iter().for_each(|item| render(body, root, item, out)),
                        item => render(body, root, item, out),
                    }
                }
            }
        }
    }
}

/// Strings as they are, everything else as compact JSON (kubectl prints
/// objects and arrays as JSON too).
fn print_value(value: &Value, out: &mut String) {
    match value {
        Value::String(text) => out.push_str(text),
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

impl Path {
    fn select<'a>(&self, root: &'a Value, current: &'a Value) -> Vec<&'a Value> {
        let from = if self.from_root { root } else { current };
        // Evaluation errors are those of a value the path cannot apply to
        // (kubectl, by default, prints nothing for a missing key either).
        js_path_process(&self.query, from)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }

    /// Compiles kubectl's form of a path, starting at character `at`.
    fn parse(source: &str, at: usize) -> Result<Self, TemplateError> {
        let (from_root, rfc) = match source.as_bytes().first() {
            Some(b'$') => (true, source.to_owned()),
            Some(b'@') => (false, format!("${}", &source[1..])),
            Some(b'.' | b'[') => (false, format!("${source}")),
            _ => (false, format!("$.{source}")),
        };
        let query = parse_json_path(&rfc).map_err(|err| TemplateError {
            at,
            message: format!("`{source}` is not a JSONPath: {}", one_line(&err.to_string())),
        })?;
        Ok(Self { from_root, query })
    }
}

/// The parser's message without its multi-line source excerpt.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Parser<'a> {
    template: &'a str,
    /// Byte offset of what is parsed next.
    at: usize,
}

impl Parser<'_> {
    /// 1-based character position of byte offset `at`, for messages.
    fn character(&self, at: usize) -> usize {
        self.template[..at].chars().count() + 1
    }

    fn error(&self, at: usize, message: impl Into<String>) -> TemplateError {
        TemplateError { at: self.character(at), message: message.into() }
    }

    /// Nodes up to the end of the template or an `{end}`; the character
    /// position of that `{end}`, if it was one.
    fn nodes(&mut self) -> Result<(Vec<Node>, Option<usize>), TemplateError> {
        let mut nodes = Vec::new();
        while self.at < self.template.len() {
            let rest = &self.template[self.at..];
            let Some(open) = rest.find('{') else {
                nodes.push(Node::Text(unescape_text(rest)));
                self.at = self.template.len();
                break;
            };
            if open > 0 {
                nodes.push(Node::Text(unescape_text(&rest[..open])));
            }
            let start = self.at + open;
            let close = action_end(&self.template[start + 1..])
                .ok_or_else(|| self.error(start, "`{` is not closed by a `}`"))?;
            let raw = &self.template[start + 1..start + 1 + close];
            let action = raw.trim();
            // Where the action's text starts, for the position of its errors.
            let inner = start + 1 + (raw.len() - raw.trim_start().len());
            self.at = start + close + 2;
            if action.is_empty() {
                return Err(self.error(start, "an empty action `{}`"));
            } else if action == "end" {
                return Ok((nodes, Some(self.character(start))));
            } else if let Some(path) = action.strip_prefix("range ") {
                let path_at = inner + action.len() - path.trim_start().len();
                let path = Path::parse(path.trim(), self.character(path_at))?;
                let (body, end) = self.nodes()?;
                if end.is_none() {
                    return Err(self.error(start, "{range} without its {end}"));
                }
                nodes.push(Node::Range(path, body));
            } else if action.starts_with(['"', '\'']) {
                nodes.push(Node::Text(unquote(action).map_err(|message| self.error(start, message))?));
            } else {
                nodes.push(Node::Print(Path::parse(action, self.character(inner))?));
            }
        }
        Ok((nodes, None))
    }
}

/// Where the action that starts `text` (after its `{`) ends: the `}` not
/// inside a quoted string (a filter may compare with `"}"`).
fn action_end(text: &str) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '}' => return Some(at),
            None => {}
        }
    }
    None
}

/// Text between actions, with `\n`, `\t`, `\r` and `\\` as in a quoted
/// string, so that `'{.a}\n'` works in a shell's single quotes.
fn unescape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A quoted string action, `{"\t"}` or `{'x'}`.
fn unquote(action: &str) -> Result<String, String> {
    let quote = action.chars().next().unwrap_or('"');
    let inner = action
        .strip_prefix(quote)
        .and_then(|rest| rest.strip_suffix(quote))
        .ok_or_else(|| format!("{action} is not one quoted string"))?;
    Ok(unescape_text(&inner.replace(&format!("\\{quote}"), &quote.to_string())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(template: &str, document: &Value) -> String {
        Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}")).render(document)
    }

    fn document() -> Value {
        json!({
            "services": [
                {"frontend": "198.18.0.10:80/tcp", "name": "policy/web", "backends": [{"port": 8080}, {"port": 8081}]},
                {"frontend": "198.18.0.11:80/tcp", "name": null, "backends": []}
            ],
            "count": 2
        })
    }

    #[test]
    fn text_fields_and_lists() {
        let doc = document();
        assert_eq!(render("n={.count}", &doc), "n=2");
        assert_eq!(render("{.services[*].frontend}", &doc), "198.18.0.10:80/tcp 198.18.0.11:80/tcp");
        assert_eq!(render("{.services[0].backends[*].port}", &doc), "8080 8081");
        assert_eq!(render("{$.services[1].name}", &doc), "null");
        assert_eq!(render("{.services[0].backends[0]}", &doc), r#"{"port":8080}"#);
        assert_eq!(render("{services[0].name}", &doc), "policy/web");
        assert_eq!(render("{.missing}", &doc), "");
        assert_eq!(render("plain text", &doc), "plain text");
    }

    #[test]
    fn ranges_quotes_and_escapes() {
        let doc = document();
        assert_eq!(
            render(r#"{range .services[*]}{.frontend}{"\t"}{.backends[*].port}{"\n"}{end}"#, &doc),
            "198.18.0.10:80/tcp\t8080 8081\n198.18.0.11:80/tcp\t\n"
        );
        assert_eq!(render(r"{range .services[*]}{.name}\n{end}", &doc), "policy/web\nnull\n");
        // A range over the array itself walks its items; @ is the item.
        assert_eq!(render("{range .services[0].backends}[{@.port}]{end}", &doc), "[8080][8081]");
        assert_eq!(render("{range .services[0].backends[*].port}{@},{end}", &doc), "8080,8081,");
        // Nested ranges, and $ for the document inside one.
        assert_eq!(
            render("{range .services[*]}{range .backends[*]}{.port}/{$.count} {end}{end}", &doc),
            "8080/2 8081/2 "
        );
        assert_eq!(render(r#"{'a b'}{"a\"b"}"#, &doc), "a ba\"b");
    }

    #[test]
    fn filters_come_from_the_evaluator() {
        let doc = document();
        assert_eq!(render(r#"{.services[?(@.name=="policy/web")].frontend}"#, &doc), "198.18.0.10:80/tcp");
        assert_eq!(render("{.services[?@.backends[0].port > 8000].name}", &doc), "policy/web");
        assert_eq!(render(r#"{.services[?(@.frontend=="}")].name}"#, &doc), "");
    }

    #[test]
    fn bad_templates_say_where() {
        let error = |template: &str| Template::parse(template).unwrap_err();
        assert_eq!(error("ab{.x").at, 3);
        assert!(error("ab{.x").message.contains("not closed"));
        assert_eq!(error("{range .a[*]}{.b}").at, 1);
        assert!(error("{range .a[*]}{.b}").message.contains("without its {end}"));
        assert_eq!(error("x{.a}{end}").at, 6);
        assert_eq!(error("{}").at, 1);
        let bad = error("12345{.a[}");
        assert_eq!(bad.at, 7, "{bad}");
        assert!(bad.message.contains("`.a[` is not a JSONPath"), "{bad}");
        assert_eq!(error("{range .a[}{end}").at, 8);
        assert!(error(r#"{"abc}"#).message.contains("not closed"));
    }
}
