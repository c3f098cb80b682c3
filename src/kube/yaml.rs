//! A reader for the part of YAML that kubeconfig writers produce (kubectl, kind, client-go's
//! `clientcmd.Write`, Gardener) and for the original audit-forwarder's flat `-c` config file.
//! There is no YAML crate among the project's dependencies, and these files use a small, stable
//! part of the language; whatever lies outside it is refused with its line number rather than
//! read differently from what a real YAML parser would read.
//!
//! Read: block mappings and sequences (also a sequence at its parent key's indentation, as
//! kubectl writes `contexts:\n- context:`), plain, single- and double-quoted scalars, comments,
//! one leading `---`, one-line flow collections of scalars (`{}`, `[]`, `[a, "b"]`, `{k: v}`),
//! null as `null`, `~` or nothing. Scalars keep their text: there is no type resolution, the
//! caller decides what `true` or `443` means.
//! Refused: block scalars (`|`, `>`), anchors, aliases, tags, tabs in the indentation,
//! duplicate keys, more than one document, quoted scalars spanning lines, nested flow
//! collections.

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line the node starts on (for a mapping's value: its key's line); 0 when unknown,
    /// as for a node converted from JSON.
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are unique (duplicates are refused).
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value of `key` in a mapping; `None` for a missing key or a node that is no mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// What the node is, for error messages ("must be a string, not a mapping").
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Scalar(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// " (line N)" when the line is known, for appending to messages about this node.
    pub fn at(&self) -> String {
        match self.line {
            0 => String::new(),
            n => format!(" (line {n})"),
        }
    }
}

/// Parses one YAML document; an empty one (only comments) is `Null`.
pub fn parse(text: &str) -> Result<Node, String> {
    let mut p = Parser {
        lines: lines(text)?,
        pos: 0,
        depth: 0,
    };
    let Some(&first) = p.lines.first() else {
        return Ok(Node {
            line: 1,
            kind: Kind::Null,
        });
    };
    let node = p.block(0)?;
    match p.lines.get(p.pos) {
        None => Ok(node),
        Some(line) if line.indent < first.indent => Err(bad_indent(line)),
        Some(line) => Err(format!(
            "line {}: {:?} continues a document whose top-level value ended on the line above; \
             check its indentation",
            line.no,
            clip(line.text)
        )),
    }
}

/// The original's `-c` config file: a top-level mapping of `key: value` pairs. Keys come back
/// in ASCII lower case, since viper matched them ignoring case; a null value is left out, as
/// viper treats it as not set (the default applies); a nested value is an error.
pub fn flat_config(text: &str) -> Result<Vec<(String, String)>, String> {
    let root = parse(text)?;
    let entries = match root.kind {
        Kind::Null => Vec::new(),
        Kind::Map(entries) => entries,
        _ => {
            return Err(format!(
                "line {}: the config file must be a mapping of `key: value` lines, not {}",
                root.line,
                root.kind_name()
            ))
        }
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in entries {
        let s = match value.kind {
            Kind::Null => continue,
            Kind::Scalar(s) => s,
            _ => {
                return Err(format!(
                    "line {}: {key:?} has {} as its value; the config file takes flat \
                     `key: value` pairs",
                    value.line,
                    value.kind_name()
                ))
            }
        };
        let key = key.to_ascii_lowercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!(
                "line {}: {key:?} is given twice (keys are compared ignoring case)",
                value.line
            ));
        }
        out.push((key, s));
    }
    Ok(out)
}

/// A line with content: not blank, not only a comment. `text` starts after the indentation and
/// has no trailing whitespace; comments at its end are still there (only the scalar reader can
/// tell a `#` inside quotes from one that starts a comment).
#[derive(Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

const WS: [char; 2] = [' ', '\t'];

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn lines(text: &str) -> Result<Vec<Line<'_>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut started = false;
    let mut ended = None;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let body = raw.trim_start_matches(WS);
        let lead = &raw[..raw.len() - body.len()];
        let body = body.trim_end_matches([' ', '\t', '\r']);
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if lead.contains('\t') {
            return Err(format!(
                "line {no}: a tab in the indentation; YAML indents with spaces only"
            ));
        }
        if let Some(end) = ended {
            return Err(format!(
                "line {no}: content after the document end `...` on line {end}; only one YAML \
                 document is supported"
            ));
        }
        let indent = lead.len();
        if indent == 0 && is_marker(body, "---") {
            if started {
                return Err(format!(
                    "line {no}: a second YAML document (`---`); only one document is supported"
                ));
            }
            started = true;
            let rest = body[3..].trim_start_matches(WS);
            if !rest.is_empty() && !rest.starts_with('#') {
                return Err(format!(
                    "line {no}: content on the `---` line is not supported; start it on the \
                     next line"
                ));
            }
            continue;
        }
        if indent == 0 && is_marker(body, "...") {
            ended = Some(no);
            continue;
        }
        if indent == 0 && body.starts_with('%') {
            return Err(format!("line {no}: YAML directives (%) are not supported"));
        }
        started = true;
        out.push(Line {
            no,
            indent,
            text: body,
        });
    }
    Ok(out)
}

fn is_marker(body: &str, marker: &str) -> bool {
    body.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(WS))
}

/// A block sequence item: `-` alone or followed by whitespace (`-1` is a scalar).
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ") || text.starts_with("-\t")
}

fn bad_indent(line: &Line) -> String {
    format!(
        "line {}: bad indentation: {:?} at column {} does not line up with the block it belongs to",
        line.no,
        clip(line.text),
        line.indent + 1
    )
}

/// The start of a line for quoting in a message, without flooding it with a base64 value.
fn clip(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
    /// Blocks open around the current one; capped so a hostile file cannot exhaust the stack
    /// (one `- ` or one column per level is enough to nest).
    depth: usize,
}

/// Kubeconfigs nest about six levels deep.
const MAX_DEPTH: usize = 64;

impl Parser<'_> {
    /// The block that starts at the current line, at that line's indentation. `min` is the
    /// least indentation a continuation line of a multi-line plain scalar may have.
    fn block(&mut self, min: usize) -> Result<Node, String> {
        let line = self.lines[self.pos];
        if self.depth == MAX_DEPTH {
            return Err(format!(
                "line {}: nested more than {MAX_DEPTH} levels deep",
                line.no
            ));
        }
        self.depth += 1;
        let node = if is_item(line.text) {
            self.seq(line.indent)
        } else if split_key(line.text, line.no)?.is_some() {
            self.map(line.indent)
        } else {
            self.pos += 1;
            value(line.text, line.no).and_then(|v| self.continued(v, line.no, min))
        };
        self.depth -= 1;
        node
    }

    fn seq(&mut self, indent: usize) -> Result<Node, String> {
        let first = self.lines[self.pos].no;
        let mut items = Vec::new();
        while let Some(&line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return Err(bad_indent(&line));
            }
            // At this indentation but no item: the next key of a mapping whose sequence sat at
            // the key's own indentation (kubectl's style); that mapping takes it from here.
            if !is_item(line.text) {
                break;
            }
            let sep = &line.text[1..];
            let rest = sep.trim_start_matches(WS);
            if rest.is_empty() || rest.starts_with('#') {
                self.pos += 1;
                items.push(match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => self.block(indent + 1)?,
                    _ => Node {
                        line: line.no,
                        kind: Kind::Null,
                    },
                });
                continue;
            }
            if sep[..sep.len() - rest.len()].contains('\t') {
                return Err(format!(
                    "line {}: a tab after `-`; the item's content must be indented with spaces",
                    line.no
                ));
            }
            // The item's content is a block at the column where it starts, so `- key: v` and
            // the keys aligned under `key` below it form one mapping.
            let l = &mut self.lines[self.pos];
            l.indent += l.text.len() - rest.len();
            l.text = rest;
            items.push(self.block(indent + 1)?);
        }
        Ok(Node {
            line: first,
            kind: Kind::Seq(items),
        })
    }

    fn map(&mut self, indent: usize) -> Result<Node, String> {
        let first = self.lines[self.pos].no;
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(&line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return Err(bad_indent(&line));
            }
            if is_item(line.text) {
                return Err(format!(
                    "line {}: a list item where a `key:` of the mapping above was expected",
                    line.no
                ));
            }
            let Some((key, rest)) = split_key(line.text, line.no)? else {
                return Err(format!(
                    "line {}: expected `key: value` in a mapping, found {:?}",
                    line.no,
                    clip(line.text)
                ));
            };
            if let Some((_, earlier)) = entries.iter().find(|(k, _)| *k == key) {
                return Err(format!(
                    "line {}: duplicate key {key:?} (first on line {})",
                    line.no, earlier.line
                ));
            }
            self.pos += 1;
            let rest = rest.trim_start_matches(WS);
            let mut value = if rest.is_empty() || rest.starts_with('#') {
                match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => self.block(indent + 1)?,
                    Some(next) if next.indent == indent && is_item(next.text) => {
                        self.seq(indent)?
                    }
                    _ => Node {
                        line: line.no,
                        kind: Kind::Null,
                    },
                }
            } else {
                let v = value(rest, line.no)?;
                self.continued(v, line.no, indent + 1)?
            };
            value.line = line.no;
            entries.push((key, value));
        }
        Ok(Node {
            line: first,
            kind: Kind::Map(entries),
        })
    }

    /// Finishes a scalar begun on line `no`: a plain one takes the following lines indented at
    /// least `min` as its continuation, joined by single spaces as YAML folds them.
    fn continued(&mut self, v: Inline, no: usize, min: usize) -> Result<Node, String> {
        let mut text = match v {
            Inline::Done(kind) => {
                if let Some(next) = self.lines.get(self.pos).filter(|l| l.indent >= min) {
                    return Err(bad_indent(next));
                }
                return Ok(Node { line: no, kind });
            }
            Inline::Plain(text) => text,
        };
        let mut folded = false;
        while let Some(&next) = self.lines.get(self.pos).filter(|l| l.indent >= min) {
            if split_key(next.text, next.no)?.is_some() {
                return Err(bad_indent(&next));
            }
            let Inline::Plain(more) = value(next.text, next.no)? else {
                return Err(bad_indent(&next));
            };
            text.push(' ');
            text.push_str(&more);
            folded = true;
            self.pos += 1;
        }
        let kind = match text.as_str() {
            "null" | "Null" | "NULL" | "~" if !folded => Kind::Null,
            _ => Kind::Scalar(text),
        };
        Ok(Node { line: no, kind })
    }
}

/// A value as it appears on one line: a plain scalar may still continue on the next lines and
/// may turn out to be null; anything else is complete.
enum Inline {
    Plain(String),
    Done(Kind),
}

/// Splits `key: rest` off a line; `None` when the line is no mapping entry.
fn split_key(text: &str, no: usize) -> Result<Option<(String, &str)>, String> {
    match text.as_bytes().first() {
        Some(b'"' | b'\'') => {
            let (key, after) = quoted(text, no)?;
            let after = after.trim_start_matches(WS);
            Ok(match after.strip_prefix(':') {
                Some(rest) if rest.is_empty() || rest.starts_with(WS) => Some((key, rest)),
                _ => None,
            })
        }
        None | Some(b'[' | b'{' | b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`') => {
            Ok(None)
        }
        Some(_) => {
            let b = text.as_bytes();
            for i in 0..b.len() {
                if b[i] == b'#' && i > 0 && is_ws(b[i - 1]) {
                    return Ok(None);
                }
                if b[i] == b':' && (i + 1 == b.len() || is_ws(b[i + 1])) {
                    let key = text[..i].trim_end_matches(WS);
                    return Ok((!key.is_empty()).then(|| (key.to_string(), &text[i + 1..])));
                }
            }
            Ok(None)
        }
    }
}

/// Refuses the indicators that start YAML features this reader does not have.
fn refuse_indicator(t: &str, no: usize) -> Result<(), String> {
    let b = t.as_bytes();
    let spaced = b.len() == 1 || b.get(1).copied().is_some_and(is_ws);
    let what = match b.first() {
        Some(b'|' | b'>') => {
            "block scalars (| or >) are not supported; write the value on one line, in quotes \
             if it needs escapes (kubectl and client-go never write block scalars)"
        }
        Some(b'&') => "anchors (&name) are not supported",
        Some(b'*') => "aliases (*name) are not supported",
        Some(b'!') => "tags (!tag, !!type) are not supported",
        Some(b'@' | b'`') => "a value may not start with @ or ` (reserved in YAML); quote it",
        Some(b'%') => "a value may not start with %; quote it",
        Some(b'-') if spaced => {
            "a list cannot start on the line of its key; begin it on the next line"
        }
        Some(b'?') if spaced => "complex keys (? key) are not supported",
        Some(b':') if spaced => "a value may not start with `: `; quote it",
        _ => return Ok(()),
    };
    Err(format!("line {no}: {what}"))
}

/// The value after `key:` or `- `, or a whole line in block context.
fn value(text: &str, no: usize) -> Result<Inline, String> {
    let t = text.trim_start_matches(WS);
    refuse_indicator(t, no)?;
    match t.as_bytes().first() {
        None | Some(b'#') => Ok(Inline::Done(Kind::Null)),
        Some(b'"' | b'\'') => {
            let (s, rest) = quoted(t, no)?;
            end_of_value(rest, no)?;
            Ok(Inline::Done(Kind::Scalar(s)))
        }
        Some(b'[' | b'{') => flow(t, no).map(Inline::Done),
        Some(_) => {
            let b = t.as_bytes();
            let end = (1..b.len())
                .find(|&i| b[i] == b'#' && is_ws(b[i - 1]))
                .unwrap_or(b.len());
            let s = t[..end].trim_end_matches(WS);
            if s.ends_with(':') || s.contains(": ") || s.contains(":\t") {
                return Err(format!(
                    "line {no}: `: ` inside the plain value {:?}; quote the value",
                    clip(s)
                ));
            }
            Ok(Inline::Plain(s.to_string()))
        }
    }
}

/// After a quoted scalar or a flow collection only whitespace and a comment may follow.
fn end_of_value(rest: &str, no: usize) -> Result<(), String> {
    let t = rest.trim_start_matches(WS);
    if t.is_empty() || (t.starts_with('#') && t.len() < rest.len()) {
        Ok(())
    } else {
        Err(format!(
            "line {no}: unexpected {:?} after the value",
            clip(t)
        ))
    }
}

/// A single- or double-quoted scalar at the start of `t`; returns it and the text after the
/// closing quote. Quoted scalars must close on their line.
fn quoted(t: &str, no: usize) -> Result<(String, &str), String> {
    let double = t.starts_with('"');
    let mut out = String::new();
    let mut chars = t[1..].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let after = &t[1 + i + c.len_utf8()..];
        match c {
            '\'' if !double => {
                // '' is the only escape in single quotes.
                if after.starts_with('\'') {
                    out.push('\'');
                    chars.next();
                } else {
                    return Ok((out, after));
                }
            }
            '"' if double => return Ok((out, after)),
            '\\' if double => {
                let Some((_, e)) = chars.next() else { break };
                let c = match e {
                    '0' => '\0',
                    'a' => '\x07',
                    'b' => '\x08',
                    't' | '\t' => '\t',
                    'n' => '\n',
                    'v' => '\x0b',
                    'f' => '\x0c',
                    'r' => '\r',
                    'e' => '\x1b',
                    ' ' => ' ',
                    '"' => '"',
                    '/' => '/',
                    '\\' => '\\',
                    'N' => '\u{85}',
                    '_' => '\u{a0}',
                    'L' => '\u{2028}',
                    'P' => '\u{2029}',
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..n {
                            let d = chars.next().and_then(|(_, d)| d.to_digit(16));
                            let Some(d) = d else {
                                return Err(format!(
                                    "line {no}: \\{e} needs {n} hex digits in a double-quoted value"
                                ));
                            };
                            v = v << 4 | d;
                        }
                        char::from_u32(v).ok_or_else(|| {
                            format!("line {no}: \\{e}{v:x} is not a character (UTF-16 surrogate halves are not supported)")
                        })?
                    }
                    other => {
                        return Err(format!(
                            "line {no}: unknown escape \\{other} in a double-quoted value"
                        ))
                    }
                };
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    Err(format!(
        "line {no}: the quoted value does not end on its line; multi-line quoted values are not \
         supported"
    ))
}

/// A one-line flow collection of scalars: `[]`, `{}`, `[a, "b"]`, `{k: v, k2: v2}`.
fn flow(t: &str, no: usize) -> Result<Kind, String> {
    let is_map = t.starts_with('{');
    let close = if is_map { '}' } else { ']' };
    let mut items = Vec::new();
    let mut entries: Vec<(String, Node)> = Vec::new();
    let mut rest = &t[1..];
    loop {
        rest = rest.trim_start_matches(WS);
        if let Some(after) = rest.strip_prefix(close) {
            end_of_value(after, no)?;
            break;
        }
        let (item, after) = flow_scalar(rest, no, false)?;
        rest = after.trim_start_matches(WS);
        if is_map {
            let Kind::Scalar(key) = item else {
                return Err(format!(
                    "line {no}: a flow mapping needs `key: value` entries"
                ));
            };
            let Some(after) = rest.strip_prefix(':') else {
                return Err(format!(
                    "line {no}: expected `:` after {key:?} in the flow mapping"
                ));
            };
            let (v, after) = flow_scalar(after.trim_start_matches(WS), no, true)?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(format!("line {no}: duplicate key {key:?}"));
            }
            entries.push((key, Node { line: no, kind: v }));
            rest = after.trim_start_matches(WS);
        } else {
            items.push(Node {
                line: no,
                kind: item,
            });
        }
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with(close) {
            return Err(format!(
                "line {no}: expected `,` or `{close}` in the flow collection, found {:?}",
                clip(rest)
            ));
        }
    }
    Ok(if is_map {
        Kind::Map(entries)
    } else {
        Kind::Seq(items)
    })
}

/// One scalar inside a flow collection; plain ones end at `,`, `]`, `}` or `: `. Only a
/// mapping's value may be empty (`{k: }` is null); YAML has no empty list entries (`[a,,b]`).
fn flow_scalar(s: &str, no: usize, empty_ok: bool) -> Result<(Kind, &str), String> {
    refuse_indicator(s, no)?;
    match s.as_bytes().first() {
        None | Some(b'#') => Err(format!(
            "line {no}: the flow collection does not close on its line; write it on one line \
             or in block style"
        )),
        Some(b'"' | b'\'') => quoted(s, no).map(|(v, rest)| (Kind::Scalar(v), rest)),
        Some(b'[' | b'{') => Err(format!(
            "line {no}: nested flow collections are not supported; use block style"
        )),
        Some(_) => {
            let b = s.as_bytes();
            let end = (0..b.len())
                .find(|&i| {
                    matches!(b[i], b',' | b']' | b'}')
                        || (b[i] == b':'
                            && b.get(i + 1)
                                .is_none_or(|&n| is_ws(n) || b",]}".contains(&n)))
                        || (b[i] == b'#' && i > 0 && is_ws(b[i - 1]))
                })
                .unwrap_or(b.len());
            let v = s[..end].trim_end_matches(WS);
            if v.is_empty() && !empty_ok {
                return Err(format!("line {no}: an empty entry in the flow collection"));
            }
            let kind = match v {
                "" | "null" | "Null" | "NULL" | "~" => Kind::Null,
                _ => Kind::Scalar(v.to_string()),
            };
            Ok((kind, &s[end..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{flat_config, parse, Kind, Node};

    fn s(v: &str) -> Kind {
        Kind::Scalar(v.to_string())
    }

    /// The tree without line numbers, for comparing shapes.
    fn shape(n: &Node) -> Kind {
        match &n.kind {
            Kind::Seq(items) => Kind::Seq(
                items
                    .iter()
                    .map(|i| Node {
                        line: 0,
                        kind: shape(i),
                    })
                    .collect(),
            ),
            Kind::Map(m) => Kind::Map(
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            Node {
                                line: 0,
                                kind: shape(v),
                            },
                        )
                    })
                    .collect(),
            ),
            k => k.clone(),
        }
    }

    fn map(entries: Vec<(&str, Kind)>) -> Kind {
        Kind::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), Node { line: 0, kind: v }))
                .collect(),
        )
    }

    fn seq(items: Vec<Kind>) -> Kind {
        Kind::Seq(
            items
                .into_iter()
                .map(|kind| Node { line: 0, kind })
                .collect(),
        )
    }

    #[test]
    fn reads_the_supported_subset() {
        let table: Vec<(&str, Kind)> = vec![
            ("", Kind::Null),
            ("# only a comment\n\n", Kind::Null),
            ("a: b", map(vec![("a", s("b"))])),
            ("---\na: b\n", map(vec![("a", s("b"))])),
            ("# c\n--- # c\na: b\n...\n# c", map(vec![("a", s("b"))])),
            (
                "a:\nb: ~\nc: null\nd: NULL\ne: 'null'\nf: \"\"\n",
                map(vec![
                    ("a", Kind::Null),
                    ("b", Kind::Null),
                    ("c", Kind::Null),
                    ("d", Kind::Null),
                    ("e", s("null")),
                    ("f", s("")),
                ]),
            ),
            // kubectl: the list at its key's indentation, `- key:` items with aligned keys.
            (
                "contexts:\n- context:\n    cluster: x\n    user: u\n  name: y\ncurrent-context: y\n",
                map(vec![
                    (
                        "contexts",
                        seq(vec![map(vec![
                            ("context", map(vec![("cluster", s("x")), ("user", s("u"))])),
                            ("name", s("y")),
                        ])]),
                    ),
                    ("current-context", s("y")),
                ]),
            ),
            // Indented lists, nested lists, items that are scalars or empty.
            (
                "a:\n  - 1\n  -   b: 2\n      c: 3\n  -\n  - - x\n    - y\n  - # empty\n",
                map(vec![(
                    "a",
                    seq(vec![
                        s("1"),
                        map(vec![("b", s("2")), ("c", s("3"))]),
                        Kind::Null,
                        seq(vec![s("x"), s("y")]),
                        Kind::Null,
                    ]),
                )]),
            ),
            (
                "- a\n-\n  b: c\n- -1\n",
                seq(vec![s("a"), map(vec![("b", s("c"))]), s("-1")]),
            ),
            // Comments after values, inside quotes they are text; `#` without a space is text.
            (
                "a: b # c\nb: 'x # y' # z\nc: \"#\"\nd: e#f\n# the end\n",
                map(vec![
                    ("a", s("b")),
                    ("b", s("x # y")),
                    ("c", s("#")),
                    ("d", s("e#f")),
                ]),
            ),
            // Quoted keys and values, escapes, URLs and colons that are not separators.
            (
                "\"a b\": 'it''s'\n'c:d' : \"t\\ta\\\"\\\\\\n\\u00e9\\x41\\U0001F600\"\nserver: https://h:6443/p\nk:v: x:y\n",
                map(vec![
                    ("a b", s("it's")),
                    ("c:d", s("t\ta\"\\\n\u{e9}A\u{1F600}")),
                    ("server", s("https://h:6443/p")),
                    ("k:v", s("x:y")),
                ]),
            ),
            // Flow collections of scalars on one line.
            (
                "a: {}\nb: [ ]\nc: [x, 'y, z', \"w\",] # c\nd: {k: v, 'q': 1, e: , u: http://h:1}\n",
                map(vec![
                    ("a", map(vec![])),
                    ("b", seq(vec![])),
                    ("c", seq(vec![s("x"), s("y, z"), s("w")])),
                    (
                        "d",
                        map(vec![
                            ("k", s("v")),
                            ("q", s("1")),
                            ("e", Kind::Null),
                            ("u", s("http://h:1")),
                        ]),
                    ),
                ]),
            ),
            // A plain value folded over more indented lines; CRLF line ends.
            (
                "a: one\n  two\r\n   three\r\nb:\n  x\n  y\n",
                map(vec![("a", s("one two three")), ("b", s("x y"))]),
            ),
            ("\u{feff}a:    b   \n", map(vec![("a", s("b"))])),
        ];
        for (text, want) in table {
            let got = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(shape(&got), want, "{text:?}");
        }
    }

    #[test]
    fn keeps_line_numbers_of_values_and_items() {
        let doc = parse("# c\nusers:\n- name: a\n  user:\n    token: t\n").expect("valid");
        assert_eq!(doc.line, 2);
        let users = doc.get("users").expect("users");
        assert_eq!(users.line, 2, "a value carries its key's line");
        let Kind::Seq(items) = &users.kind else {
            panic!("{users:?}")
        };
        assert_eq!(items[0].line, 3);
        let token = items[0]
            .get("user")
            .and_then(|u| u.get("token"))
            .expect("token");
        assert_eq!((token.line, token.as_str()), (5, Some("t")));
        assert_eq!(token.at(), " (line 5)");
    }

    #[test]
    fn refuses_what_it_does_not_read_with_the_line() {
        let table: &[(&str, &str)] = &[
            (
                "a: b\nc: |\n  x\n",
                "line 2: block scalars (| or >) are not supported",
            ),
            ("a: >-\n  x\n", "line 1: block scalars"),
            ("- |\n  x\n", "line 1: block scalars"),
            ("a: &x b\n", "line 1: anchors"),
            ("a: *x\n", "line 1: aliases"),
            ("a: !!str b\n", "line 1: tags"),
            ("&a k: v\n", "line 1: anchors"),
            ("a:\n\tb: c\n", "line 2: a tab in the indentation"),
            ("a:\n  \tb: c\n", "line 2: a tab in the indentation"),
            (
                "a: 1\nb: 2\na: 3\n",
                "line 3: duplicate key \"a\" (first on line 1)",
            ),
            ("x:\n  'a': 1\n  \"a\": 2\n", "line 3: duplicate key \"a\""),
            ("a: 1\n---\nb: 2\n", "line 2: a second YAML document"),
            (
                "a: 1\n...\nb: 2\n",
                "line 3: content after the document end",
            ),
            ("--- a: 1\n", "line 1: content on the `---` line"),
            ("%YAML 1.2\n---\na: 1\n", "line 1: YAML directives"),
            ("a:\n  b: 1\n   c: 2\n", "line 3: bad indentation"),
            ("a:\n    b: 1\n  c: 2\n", "line 3: bad indentation"),
            ("  a: 1\nb: 2\n", "line 2: bad indentation"),
            ("a: 1\n  b: 2\n", "line 2: bad indentation"),
            ("a: 'x'\n  y\n", "line 2: bad indentation"),
            ("- a\nb: 1\n", "line 2:"),
            ("a: 1\n- b\n", "line 2: a list item where a `key:`"),
            ("a: b: c\n", "line 1: `: ` inside the plain value"),
            (
                "a: - b\n",
                "line 1: a list cannot start on the line of its key",
            ),
            (
                "a: 'open\n  close'\n",
                "line 1: the quoted value does not end on its line",
            ),
            ("a: \"x\\q\"\n", "line 1: unknown escape \\q"),
            ("a: \"\\ud800\"\n", "line 1: \\ud800 is not a character"),
            ("a: \"x\" y\n", "line 1: unexpected \"y\" after the value"),
            ("a: [x, [y]]\n", "line 1: nested flow collections"),
            (
                "a: [x,\n  y]\n",
                "line 1: the flow collection does not close on its line",
            ),
            ("a: [x,,y]\n", "line 1: an empty entry"),
            ("a: [,]\n", "line 1: an empty entry"),
            ("a: {k: 1, k: 2}\n", "line 1: duplicate key \"k\""),
            ("a: {x}\n", "line 1: expected `:` after \"x\""),
            ("a:\n  - x\n  y: 1\n", "line 3: bad indentation"),
            ("a: 1\nb c\n", "line 2: expected `key: value`"),
            ("? a\n: b\n", "line 1: complex keys"),
            ("-\tx\n", "line 1: a tab after `-`"),
        ];
        for (text, want) in table {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Nesting is capped, whether by `- ` on one line or one column per line.
        let deep_items = "- ".repeat(100) + "x";
        let deep_keys: String = (0..100).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        for text in [deep_items, deep_keys] {
            let err = parse(&text).expect_err("too deep");
            assert!(err.contains("nested more than 64 levels deep"), "{err}");
        }
        assert!(parse(&("- ".repeat(60) + "x")).is_ok());
    }

    #[test]
    fn flat_config_reads_the_originals_file() {
        let got = flat_config(
            "# audit-forwarder\naudit-log-path: /auditlog\nnamespace: \"audit\"\n\
             backoff-timer: 10s\nlog-level:\ntls-vhost: 'audittailer'\n",
        )
        .expect("valid");
        let want = [
            ("audit-log-path", "/auditlog"),
            ("namespace", "audit"),
            ("backoff-timer", "10s"),
            ("tls-vhost", "audittailer"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got, want,
            "null values are left out, as viper leaves them unset"
        );
        assert_eq!(flat_config("# nothing\n"), Ok(vec![]));
        assert_eq!(
            flat_config("Audit-Log-Path: /x\n"),
            Ok(vec![("audit-log-path".to_string(), "/x".to_string())]),
            "viper matched keys ignoring case"
        );
        let table: &[(&str, &str)] = &[
            (
                "a: 1\nproxy:\n  host: x\n",
                "line 2: \"proxy\" has a mapping as its value",
            ),
            ("a: [1, 2]\n", "line 1: \"a\" has a list as its value"),
            ("- a\n", "line 1: the config file must be a mapping"),
            ("a: |\n  x\n", "line 1: block scalars"),
            (
                "log-level: info\nLog-Level: debug\n",
                "line 2: \"log-level\" is given twice",
            ),
        ];
        for (text, want) in table {
            let err = flat_config(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
