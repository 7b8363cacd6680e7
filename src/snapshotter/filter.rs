//! Walk filters in containerd's syntax (its `filters` package), parsed once per Walk.
//!
//! A filter is a comma-separated list of selectors that must all match; a Walk with several
//! filters lists what matches any of them, and one with none (or an empty filter) lists
//! everything. A selector is `FIELDPATH`, `FIELDPATH==VALUE`, `!=` or `~=` (a regular
//! expression). The grammar, as containerd writes it:
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)
//! fieldpath := field ('.' field)*
//! field     := quoted | [A-Za-z0-9_-]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := "..." | /.../ | |...|   (Go escapes inside)
//! ```
//!
//! The scanner and parser follow containerd's step by step (the same lookahead, the same
//! handling of spaces), so a filter that containerd accepts means the same here and one it
//! refuses is refused here too, as `InvalidArgument`. Matching follows containerd as well: `!=`
//! matches a missing field, `~=` matches a missing field as the empty string, and a regular
//! expression that does not compile matches nothing (containerd only logs it).

use std::collections::HashMap;

use regex::Regex;

/// Which comparison a selector makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Present,
    Equal,
    NotEqual,
    Matches,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
    value: String,
    /// `~=` only; `None` when the expression does not compile.
    re: Option<Regex>,
}

/// Any of several filters, each all of its selectors; an empty filter matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
    /// No filter at all, or an empty one among them.
    always: bool,
}

impl Filter {
    /// Whether the object whose fields `field` reports matches. `field` answers a field path
    /// with the field's value, or `None` when the object has no such field.
    pub fn matches<'a>(&self, field: impl Fn(&[String]) -> Option<&'a str>) -> bool {
        if self.always {
            return true;
        }
        self.any.iter().any(|all| {
            all.iter().all(|s| {
                let value = field(&s.path);
                match s.op {
                    Op::Present => value.is_some(),
                    Op::Equal => value == Some(s.value.as_str()),
                    Op::NotEqual => value.unwrap_or("") != s.value,
                    Op::Matches => {
                        s.re.as_ref()
                            .is_some_and(|re| re.is_match(value.unwrap_or("")))
                    }
                }
            })
        })
    }
}

/// Parses each filter; the result matches what any of them matches (containerd's `ParseAll`).
pub fn parse_all(filters: &[String]) -> Result<Filter, String> {
    let mut out = Filter {
        any: Vec::new(),
        always: filters.is_empty(),
    };
    for f in filters {
        if f.is_empty() {
            out.always = true;
            continue;
        }
        out.any.push(Parser::new(f).selectors()?);
    }
    Ok(out)
}

/// What the scanner found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Eof,
    Illegal,
    Quoted(&'a str),
    Value(&'a str),
    Field(&'a str),
    Separator,
    Operator(&'a str),
    /// Any other character, refused by the parser where it appears.
    Other(char),
}

/// The position-tracking scanner: `pos` is where the last character read starts, `ppos` where
/// the next one does; `value` says that an operator was just read, so that the next word is a
/// value (which may hold `.` and other punctuation) rather than a field.
struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    ppos: usize,
    value: bool,
}

/// The end of input, as a character no input contains.
const EOF: Option<char> = None;

impl<'a> Scanner<'a> {
    fn next(&mut self) -> Option<char> {
        let c = self.input[self.ppos..].chars().next()?;
        self.pos = self.ppos;
        self.ppos += c.len_utf8();
        Some(c)
    }

    fn peek(&mut self) -> Option<char> {
        let (pos, ppos) = (self.pos, self.ppos);
        let c = self.next();
        self.pos = pos;
        self.ppos = ppos;
        c
    }

    /// The next token and where it starts.
    fn scan(&mut self) -> (usize, Token<'a>) {
        let mut ch = self.next();
        let mut pos = self.pos;
        loop {
            let Some(c) = ch else {
                return (self.ppos, Token::Eof);
            };
            if c == '\0' {
                return (pos, Token::Illegal);
            }
            if is_quote(c) {
                let ok = self.scan_quoted(c);
                let text = &self.input[pos..self.ppos];
                return (
                    pos,
                    if ok {
                        Token::Quoted(text)
                    } else {
                        Token::Illegal
                    },
                );
            }
            if c == ',' || c == '.' {
                self.value = false;
                return (pos, Token::Separator);
            }
            if is_operator(c) {
                while self.peek().is_some_and(is_operator) {
                    self.next();
                }
                self.value = true;
                return (pos, Token::Operator(&self.input[pos..self.ppos]));
            }
            if c.is_whitespace() {
                ch = self.next();
                pos = self.pos;
                continue;
            }
            if self.value {
                while self.peek().is_some_and(is_value) {
                    self.next();
                }
                self.value = false;
                return (pos, Token::Value(&self.input[pos..self.ppos]));
            }
            if is_field(c) {
                while self.peek().is_some_and(is_field) {
                    self.next();
                }
                return (pos, Token::Field(&self.input[pos..self.ppos]));
            }
            return (pos, Token::Other(c));
        }
    }

    /// Consumes a quoted literal up to its closing `quote`; false if it is not terminated or
    /// holds an escape Go would refuse.
    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut legal = true;
        let mut ch = self.next();
        while ch != Some(quote) {
            match ch {
                None | Some('\n') => return false,
                Some('\\') => {
                    let (next, ok) = self.scan_escape(quote);
                    legal &= ok;
                    ch = next;
                }
                Some(_) => ch = self.next(),
            }
        }
        legal
    }

    fn scan_escape(&mut self, quote: char) -> (Option<char>, bool) {
        match self.next() {
            Some(c) if "abfnrtv\\".contains(c) || c == quote => (self.next(), true),
            Some(c @ '0'..='7') => self.scan_digits(Some(c), 8, 3),
            Some('x') => {
                let c = self.next();
                self.scan_digits(c, 16, 2)
            }
            Some('u') => {
                let c = self.next();
                self.scan_digits(c, 16, 4)
            }
            Some('U') => {
                let c = self.next();
                self.scan_digits(c, 16, 8)
            }
            other => (other, false),
        }
    }

    fn scan_digits(
        &mut self,
        mut ch: Option<char>,
        base: u32,
        mut n: usize,
    ) -> (Option<char>, bool) {
        while n > 0 && ch.and_then(|c| c.to_digit(16)).is_some_and(|d| d < base) {
            ch = self.next();
            n -= 1;
        }
        (ch, n == 0)
    }
}

fn is_quote(c: char) -> bool {
    matches!(c, '/' | '|' | '"')
}

fn is_operator(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_field(c: char) -> bool {
    c == '-' || c == '_' || c.is_ascii_alphanumeric()
}

fn is_value(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

struct Parser<'a> {
    input: &'a str,
    scanner: Scanner<'a>,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            scanner: Scanner {
                input,
                pos: 0,
                ppos: 0,
                value: false,
            },
        }
    }

    fn error(&self, pos: usize, msg: impl std::fmt::Display) -> String {
        // containerd's rendering: the input with the offending character marked.
        let input = self.input;
        match input.get(pos..).and_then(|rest| rest.chars().next()) {
            Some(c) => {
                let end = pos + c.len_utf8();
                format!(
                    "filters: parse error: [{} >|{}|< {}]: {msg}",
                    &input[..pos],
                    &input[pos..end],
                    &input[end..]
                )
            }
            None => format!("filters: parse error: [{input}]: {msg}"),
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, String> {
        let mut all = vec![self.selector()?];
        loop {
            match self.scanner.peek() {
                Some(',') => {
                    self.scanner.scan();
                    all.push(self.selector()?);
                }
                EOF => return Ok(all),
                Some(c) => {
                    let pos = self.scanner.ppos;
                    return Err(self.error(pos, format!("unexpected input: {c}")));
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let path = self.fieldpath()?;
        if matches!(self.scanner.peek(), Some(',') | EOF) {
            return Ok(Selector {
                path,
                op: Op::Present,
                value: String::new(),
                re: None,
            });
        }
        let op = self.operator()?;
        let value = self.value()?;
        let re = match op {
            Op::Matches => match Regex::new(&value) {
                Ok(re) => Some(re),
                Err(err) => {
                    log::warn!("error compiling regexp {value:?}: {err}");
                    None
                }
            },
            _ => None,
        };
        Ok(Selector {
            path,
            op,
            value,
            re,
        })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, String> {
        let mut path = vec![self.field()?];
        while self.scanner.peek() == Some('.') {
            self.scanner.scan();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, String> {
        match self.scanner.scan() {
            (_, Token::Field(s)) => Ok(s.to_string()),
            (pos, Token::Quoted(s)) => self.unquote(pos, s),
            (pos, _) => Err(self.error(pos, "expected field or quoted")),
        }
    }

    fn operator(&mut self) -> Result<Op, String> {
        match self.scanner.scan() {
            (_, Token::Operator("==")) => Ok(Op::Equal),
            (_, Token::Operator("!=")) => Ok(Op::NotEqual),
            (_, Token::Operator("~=")) => Ok(Op::Matches),
            (pos, Token::Operator(s)) => {
                Err(self.error(pos, format!("unsupported operator {s:?}")))
            }
            (pos, _) => Err(self.error(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.scanner.scan() {
            (_, Token::Value(s) | Token::Field(s)) => Ok(s.to_string()),
            (pos, Token::Quoted(s)) => self.unquote(pos, s),
            (pos, Token::Eof) => Err(self.error(pos, "unexpected EOF")),
            (pos, _) => Err(self.error(pos, "expected value or quoted")),
        }
    }

    /// The text of a quoted literal (quotes included in `s`), with Go's escapes decoded.
    fn unquote(&self, pos: usize, s: &str) -> Result<String, String> {
        unquote(s).ok_or_else(|| self.error(pos, "unquoting failed: invalid syntax"))
    }
}

/// Decodes a literal quoted by `"`, `/` or `|` (the scanner has checked its escapes).
fn unquote(s: &str) -> Option<String> {
    let quote = s.chars().next()?;
    let inner = s.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == quote {
            // An unescaped quote inside: the scanner would have ended the literal there.
            return None;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        let decoded = match e {
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            '\\' => '\\',
            c if c == quote => c,
            '0'..='7' => {
                let digits: String = std::iter::once(e).chain(chars.by_ref().take(2)).collect();
                char::from_u32(u32::from_str_radix(&digits, 8).ok()?)?
            }
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let digits: String = chars.by_ref().take(n).collect();
                char::from_u32(u32::from_str_radix(&digits, 16).ok()?)?
            }
            _ => return None,
        };
        out.push(decoded);
    }
    Some(out)
}

/// A snapshot's fields as containerd's metastore adapts them to filters: `name`, `kind`,
/// `parent`, and `labels.KEY` (no labels at all: no `labels` field).
pub fn snapshot_fields<'a>(
    name: &'a str,
    kind: &'a str,
    parent: &'a str,
    labels: &'a HashMap<String, String>,
) -> impl Fn(&[String]) -> Option<&'a str> {
    move |path: &[String]| match path.split_first() {
        Some((field, _)) if field == "name" => Some(name),
        Some((field, _)) if field == "kind" => Some(kind),
        Some((field, _)) if field == "parent" => Some(parent),
        Some((field, key)) if field == "labels" && !labels.is_empty() => {
            labels.get(&key.join(".")).map(String::as_str)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot without a parent, as the tests filter it.
    fn object<'a>(
        name: &'a str,
        kind: &'a str,
        labels: &'a HashMap<String, String>,
    ) -> impl Fn(&[String]) -> Option<&'a str> {
        snapshot_fields(name, kind, "", labels)
    }

    fn matches(filters: &[&str], name: &str, labels: &[(&str, &str)]) -> bool {
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        match parse_all(&filters) {
            Ok(f) => f.matches(object(name, "committed", &labels)),
            Err(e) => panic!("{filters:?}: {e}"),
        }
    }

    #[test]
    fn selectors_and_operators() {
        let l = [
            ("foo", "bar"),
            ("a.b", "c"),
            ("containerd.io/gc.root", "x y"),
        ];
        let cases: &[(&[&str], bool)] = &[
            (&[], true),
            (&[""], true),
            (&["name==s1"], true),
            (&["name==s2"], false),
            (&["name!=s2"], true),
            (&["name~=^s"], true),
            (&["name~=/^s[0-9]$/"], true),
            (&["name~=^x"], false),
            (&["kind==committed"], true),
            (&["labels.foo"], true),
            (&["labels.nope"], false),
            (&["labels.nope!=bar"], true),
            (&["labels.foo==bar,name==s1"], true),
            (&["labels.foo==bar,name==s2"], false),
            (&["name==s2", "labels.foo"], true),
            (&["labels.\"a.b\"==c"], true),
            (&["labels.a.b==c"], true),
            (&[r#"labels."containerd.io/gc.root"=="x y""#], true),
            (&["name == s1"], true),
            (&["name~=[", "name==s1"], true),
            (&["name~=["], false),
            (&["name==/s\\x31/"], true),
        ];
        for (filters, want) in cases {
            assert_eq!(matches(filters, "s1", &l), *want, "{filters:?}");
        }
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "name==",
            "name=",
            "name===x",
            "==x",
            "name==x y",
            "name==\"unterminated",
            "labels.",
            ",",
            "name,",
            "name==\"\\q\"",
            "na$me",
        ] {
            assert!(
                parse_all(&[bad.to_string()]).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn quoted_values() {
        assert_eq!(
            unquote(r#""a\"b\n\x41\u00e9""#).as_deref(),
            Some("a\"b\nAé")
        );
        assert_eq!(unquote(r"/a\/b/").as_deref(), Some("a/b"));
        assert_eq!(unquote(r"|a\101|").as_deref(), Some("aA"));
    }
}
