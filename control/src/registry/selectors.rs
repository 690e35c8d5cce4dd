//! Label and field selectors: parsing the query-string syntax and matching objects.
//!
//! Label selectors follow apimachinery's `labels.Parse` grammar (`k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`, comma-separated, whitespace
//! between tokens ignored) and also come from the structured `metav1.LabelSelector` form
//! (`matchLabels`, `matchExpressions`) that workload specs carry. Field selectors follow
//! `fields.ParseSelector`: comma-separated `field=value`, `field==value`,
//! `field!=value`, with `\,`, `\=` and `\\` escapes in values.
//!
//! Error messages are worded as Kubernetes words them, because clients show them
//! verbatim.

use std::fmt;

use serde_json::{Map, Value};

use super::validation;

/// How a label requirement relates its key to its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `k=v`
    Equals,
    /// `k==v`
    DoubleEquals,
    /// `k!=v`: also matches objects without the label.
    NotEquals,
    /// `k in (a,b)`
    In,
    /// `k notin (a,b)`: also matches objects without the label.
    NotIn,
    /// `k`
    Exists,
    /// `!k`
    DoesNotExist,
    /// `k>5`: the label's value parsed as an integer.
    GreaterThan,
    /// `k<5`
    LessThan,
}

/// One requirement of a label selector; all of a selector's requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    /// Sorted and free of duplicates, so that printing and comparing are canonical.
    values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement after checking the key, the values and their count, with
    /// apimachinery's messages (field paths `key`, `values`, `values[0][key]`).
    fn new(key: &str, op: Operator, mut values: Vec<String>) -> Result<Requirement, String> {
        let mut errs: Vec<String> = Vec::new();
        let key_errs = validation::qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(format!(
                "key: Invalid value: {key:?}: {}",
                key_errs.join("; ")
            ));
        }
        values.sort();
        values.dedup();
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errs.push(
                    "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
                        .to_string(),
                );
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(format!(
                    "values: Invalid value: {values:?}: exact-match compatibility requires one single value"
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                errs.push(format!(
                    "values: Invalid value: {values:?}: values set must be empty for exists and does not exist"
                ));
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {values:?}: for 'Gt', 'Lt' operators, exactly one value is required"
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let msgs = validation::label_value(v);
            if !msgs.is_empty() {
                errs.push(format!(
                    "values[{i}][{key}]: Invalid value: {v:?}: {}",
                    msgs.join("; ")
                ));
            }
        }
        match errs.len() {
            0 => Ok(Requirement {
                key: key.to_string(),
                op,
                values,
            }),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.op
    }

    /// The values, sorted.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether the requirement holds for an object whose label `key` has `actual`
    /// (`None`: no such label).
    pub fn matches_value(&self, actual: Option<&str>) -> bool {
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            Operator::Equals | Operator::DoubleEquals | Operator::In => actual.is_some_and(has),
            Operator::NotEquals | Operator::NotIn => actual.is_none_or(|v| !has(v)),
            Operator::Exists => actual.is_some(),
            Operator::DoesNotExist => actual.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(actual) = actual.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(wanted) = self.values.first().and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    actual > wanted
                } else {
                    actual < wanted
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = self.values.join(",");
        match self.op {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={joined}", self.key),
            Operator::DoubleEquals => write!(f, "{}=={joined}", self.key),
            Operator::NotEquals => write!(f, "{}!={joined}", self.key),
            Operator::In => write!(f, "{} in ({joined})", self.key),
            Operator::NotIn => write!(f, "{} notin ({joined})", self.key),
            Operator::GreaterThan => write!(f, "{}>{joined}", self.key),
            Operator::LessThan => write!(f, "{}<{joined}", self.key),
        }
    }
}

/// A parsed label selector. The empty selector matches everything; [`LabelSelector::nothing`]
/// matches nothing (what a missing structured selector means upstream).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// Sorted by key (stably), as upstream keeps them, so `Display` is canonical.
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// The selector that matches no object.
    pub fn nothing() -> Self {
        LabelSelector {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses the `labelSelector` query parameter syntax. An empty string selects
    /// everything.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let tokens = lex(s)?;
        let mut p = Parser { tokens, pos: 0 };
        let mut reqs = Vec::new();
        loop {
            match p.peek_value() {
                Tok::Ident(_) | Tok::Bang => {
                    let r = p
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match p.next_value() {
                        Tok::End => break,
                        Tok::Comma => match p.peek_value() {
                            Tok::Ident(_) | Tok::Bang => {}
                            t => {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ))
                            }
                        },
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ))
                        }
                    }
                }
                Tok::End => break,
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ))
                }
            }
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Builds a selector from a structured `metav1.LabelSelector` (`matchLabels`,
    /// `matchExpressions` with In, NotIn, Exists, DoesNotExist). `null` selects nothing,
    /// `{}` everything — as `metav1.LabelSelectorAsSelector` has it. An invalid selector
    /// selects nothing, the safe reading for a controller; validation uses
    /// [`LabelSelector::try_from_label_selector_json`] to report the problem.
    pub fn from_label_selector_json(v: &Value) -> LabelSelector {
        Self::try_from_label_selector_json(v).unwrap_or_else(|_| LabelSelector::nothing())
    }

    /// Like [`LabelSelector::from_label_selector_json`], but says what is invalid.
    pub fn try_from_label_selector_json(v: &Value) -> Result<LabelSelector, String> {
        let obj = match v {
            Value::Null => return Ok(LabelSelector::nothing()),
            Value::Object(o) => o,
            _ => return Err("a label selector must be an object".to_string()),
        };
        let mut reqs = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ml)) => {
                for (k, v) in ml {
                    let v = v
                        .as_str()
                        .ok_or_else(|| format!("matchLabels[{k}] must be a string"))?;
                    reqs.push(Requirement::new(k, Operator::Equals, vec![v.to_string()])?);
                }
            }
            Some(_) => return Err("matchLabels must be an object".to_string()),
        }
        let exprs = match obj.get("matchExpressions") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err("matchExpressions must be a list".to_string()),
        };
        {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                let op_name = e.get("operator").and_then(Value::as_str).unwrap_or("");
                let op = match op_name {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    other => {
                        return Err(format!("{other:?} is not a valid label selector operator"))
                    }
                };
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| {
                        vs.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                reqs.push(Requirement::new(key, op, values)?);
            }
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector {
            requirements: reqs,
            nothing: false,
        })
    }

    /// Builds an equality selector from a plain label map such as a Service's
    /// `spec.selector`. Values that are not strings are skipped. An empty map selects
    /// everything; callers that treat "no selector" specially must check that first.
    pub fn from_map(map: &Map<String, Value>) -> LabelSelector {
        let mut reqs: Vec<Requirement> = map
            .iter()
            .filter_map(|(k, v)| {
                v.as_str().map(|v| Requirement {
                    key: k.clone(),
                    op: Operator::Equals,
                    values: vec![v.to_string()],
                })
            })
            .collect();
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements: reqs,
            nothing: false,
        }
    }

    /// Whether the selector places no restriction (and so matches every object).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }

    /// Whether this is [`LabelSelector::nothing`].
    pub fn matches_nothing(&self) -> bool {
        self.nothing
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Matches a label map (`metadata.labels`; an empty map for an object without
    /// labels).
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|r| r.matches_value(labels.get(&r.key).and_then(Value::as_str)))
    }

    /// Matches an object by its `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        match obj.pointer("/metadata/labels").and_then(Value::as_object) {
            Some(labels) => self.matches(labels),
            None => self.matches(&Map::new()),
        }
    }

    /// Matches through a lookup function, for label sets held in other shapes (e.g. a
    /// `BTreeMap` from a `k8s-openapi` type).
    pub fn matches_with(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|r| r.matches_value(lookup(&r.key).as_deref()))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A lexer token of the label selector syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// The `in` keyword (an identifier where a value is expected).
    In,
    /// The `notin` keyword (an identifier where a value is expected).
    NotIn,
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Comma,
    OpenPar,
    ClosePar,
    End,
}

impl Tok {
    fn literal(&self) -> &str {
        match self {
            Tok::Ident(s) => s,
            Tok::In => "in",
            Tok::NotIn => "notin",
            Tok::Bang => "!",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::Comma => ",",
            Tok::OpenPar => "(",
            Tok::ClosePar => ")",
            Tok::End => "",
        }
    }

    fn symbol(s: &str) -> Option<Tok> {
        Some(match s {
            "!" => Tok::Bang,
            "=" => Tok::Eq,
            "==" => Tok::DoubleEq,
            "!=" => Tok::NotEq,
            ">" => Tok::Gt,
            "<" => Tok::Lt,
            "," => Tok::Comma,
            "(" => Tok::OpenPar,
            ")" => Tok::ClosePar,
            _ => return None,
        })
    }
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Splits a selector into tokens. Runs of special characters are read greedily as the
/// longest known symbol (so `!=` is one token, `=(` two).
fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            out.push(Tok::End);
            return Ok(out);
        }
        if is_special(b[i]) {
            let start = i;
            let mut best: Option<(Tok, usize)> = None;
            while i < b.len() && is_special(b[i]) {
                i += 1;
                match Tok::symbol(&s[start..i]) {
                    Some(t) => best = Some((t, i)),
                    None if best.is_some() => break,
                    None => {}
                }
            }
            match best {
                Some((t, end)) => {
                    out.push(t);
                    i = end;
                }
                None => {
                    return Err(format!(
                        "unable to parse requirement: error expected: keyword found '{}'",
                        &s[start..i]
                    ))
                }
            }
        } else {
            let start = i;
            while i < b.len() && !is_special(b[i]) && !is_space(b[i]) {
                i += 1;
            }
            out.push(match &s[start..i] {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                word => Tok::Ident(word.to_string()),
            });
        }
    }
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    /// The current token with keywords read as identifiers (the "values" context).
    fn peek_value(&self) -> Tok {
        as_value(self.tokens.get(self.pos).cloned().unwrap_or(Tok::End))
    }

    fn next_raw(&mut self) -> Tok {
        let t = self.tokens.get(self.pos).cloned().unwrap_or(Tok::End);
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn next_value(&mut self) -> Tok {
        as_value(self.next_raw())
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut negated = false;
        let mut tok = self.next_value();
        if tok == Tok::Bang {
            negated = true;
            tok = self.next_value();
        }
        let Tok::Ident(key) = tok else {
            return Err(format!("found '{}', expected: identifier", tok.literal()));
        };
        let key_errs = validation::qualified_name(&key);
        if !key_errs.is_empty() {
            return Err(format!(
                "<nil>: Invalid value: {key:?}: {}",
                key_errs.join("; ")
            ));
        }
        if matches!(self.peek_value(), Tok::End | Tok::Comma) {
            let op = if negated {
                Operator::DoesNotExist
            } else {
                Operator::Exists
            };
            return Requirement::new(&key, op, Vec::new());
        }
        if negated {
            // `!k=v`: the requirement ends at the key; the caller then trips over the
            // operator, as upstream does.
            return Requirement::new(&key, Operator::DoesNotExist, Vec::new());
        }
        let op_tok = self.next_raw();
        let op = match op_tok {
            Tok::In => Operator::In,
            Tok::NotIn => Operator::NotIn,
            Tok::Eq => Operator::Equals,
            Tok::DoubleEq => Operator::DoubleEquals,
            Tok::NotEq => Operator::NotEquals,
            Tok::Gt => Operator::GreaterThan,
            Tok::Lt => Operator::LessThan,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ))
            }
        };
        let values = match op {
            Operator::In | Operator::NotIn => self.set_values()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    /// `(a,b,,c)`: empty entries are the empty value.
    fn set_values(&mut self) -> Result<Vec<String>, String> {
        let t = self.next_value();
        if t != Tok::OpenPar {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.peek_value() {
            Tok::ClosePar => {
                self.next_value();
                Ok(vec![String::new()])
            }
            Tok::Ident(_) | Tok::Comma => {
                let mut values = Vec::new();
                loop {
                    match self.next_value() {
                        Tok::Ident(v) => {
                            values.push(v);
                            match self.peek_value() {
                                Tok::Comma => continue,
                                Tok::ClosePar => break,
                                t => {
                                    return Err(format!(
                                        "found '{}', expected: ',' or ')'",
                                        t.literal()
                                    ))
                                }
                            }
                        }
                        Tok::Comma => {
                            if values.is_empty() {
                                values.push(String::new());
                            }
                            match self.peek_value() {
                                Tok::ClosePar => {
                                    values.push(String::new());
                                    break;
                                }
                                Tok::Comma => values.push(String::new()),
                                _ => {}
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',', or identifier",
                                t.literal()
                            ))
                        }
                    }
                }
                let t = self.next_value();
                if t != Tok::ClosePar {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(values)
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    /// The value after `=`, `==`, `!=`, `>`, `<`; missing means the empty value.
    fn exact_value(&mut self) -> Result<Vec<String>, String> {
        if matches!(self.peek_value(), Tok::End | Tok::Comma) {
            return Ok(vec![String::new()]);
        }
        match self.next_value() {
            Tok::Ident(v) => Ok(vec![v]),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

fn as_value(t: Tok) -> Tok {
    match t {
        Tok::In => Tok::Ident("in".to_string()),
        Tok::NotIn => Tok::Ident("notin".to_string()),
        other => other,
    }
}

/// How a field selector term compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    /// `=` or `==`
    Equals,
    /// `!=`
    NotEquals,
}

/// One `field=value` or `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub op: FieldOp,
    /// The value with escapes removed.
    pub value: String,
}

/// A parsed field selector: all terms must hold. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter syntax.
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut parts = split_terms(s);
        // Upstream sorts the raw terms, which fixes the order errors are found in.
        parts.sort();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            terms.push(FieldTerm {
                field: lhs.to_string(),
                op,
                value: unescape_value(rhs)?,
            });
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// The field names the selector uses, so the caller can reject unsupported ones.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|t| t.field.as_str())
    }

    /// The value an `=` term requires for `field`, if any (lets a server narrow a list
    /// by `metadata.name` or `metadata.namespace` before filtering).
    pub fn requires_exact(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && t.op == FieldOp::Equals)
            .map(|t| t.value.as_str())
    }

    /// Whether an object matches, given a function returning a field's value. A field
    /// the object does not have (`None`) compares as the empty string, as upstream's
    /// `fields.Set` does.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let actual = get(&t.field).unwrap_or_default();
            match t.op {
                FieldOp::Equals => actual == t.value,
                FieldOp::NotEquals => actual != t.value,
            }
        })
    }
}

/// The selector's string form with values re-escaped (`a=b,c!=d`).
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match t.op {
                FieldOp::Equals => "=",
                FieldOp::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", t.field, escape_value(&t.value))?;
        }
        Ok(())
    }
}

/// Escapes a literal for use as a field selector value.
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits at commas that are not escaped.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at its first operator; at each position `!=` wins over `==` over `=`.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (op, kind) in [
            ("!=", FieldOp::NotEquals),
            ("==", FieldOp::Equals),
            ("=", FieldOp::Equals),
        ] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], kind, value));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, String> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                other => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{other}"
                    ))
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Go prints the rune with %v, i.e. as its code point.
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                ))
            }
            other => out.push(other),
        }
    }
    if in_slash {
        return Err("invalid field selector: invalid escape sequence: \\".to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?} failed to parse: {e}"),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "   ", "\t"] {
            let l = sel(s);
            assert!(l.is_empty());
            assert!(l.matches(&Map::new()));
            assert!(l.matches(&labels(json!({"a": "b"}))));
        }
    }

    #[test]
    fn equality_operators() {
        let l = labels(json!({"app": "web", "tier": "fe"}));
        assert!(sel("app=web").matches(&l));
        assert!(sel("app==web").matches(&l));
        assert!(!sel("app=db").matches(&l));
        assert!(sel("app!=db").matches(&l));
        assert!(!sel("app!=web").matches(&l));
        // != matches objects without the label at all.
        assert!(sel("missing!=x").matches(&l));
        assert!(sel("app=web,tier=fe").matches(&l));
        assert!(!sel("app=web,tier=be").matches(&l));
        assert!(!sel("app=web").matches(&Map::new()));
    }

    #[test]
    fn set_operators() {
        let l = labels(json!({"env": "prod", "app": "web"}));
        assert!(sel("env in (prod,staging)").matches(&l));
        assert!(!sel("env in (dev,staging)").matches(&l));
        assert!(sel("env notin (dev,staging)").matches(&l));
        assert!(!sel("env notin (prod)").matches(&l));
        assert!(sel("missing notin (x)").matches(&l));
        assert!(!sel("missing in (x)").matches(&l));
    }

    #[test]
    fn existence_operators() {
        let l = labels(json!({"app": "web"}));
        assert!(sel("app").matches(&l));
        assert!(!sel("other").matches(&l));
        assert!(sel("!other").matches(&l));
        assert!(!sel("!app").matches(&l));
        assert!(sel("!app").matches(&Map::new()));
    }

    #[test]
    fn numeric_comparisons() {
        let l = labels(json!({"n": "5", "s": "x"}));
        assert!(sel("n>3").matches(&l));
        assert!(!sel("n>5").matches(&l));
        assert!(sel("n<6").matches(&l));
        assert!(!sel("s<6").matches(&l));
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn whitespace_is_tolerated() {
        let l = labels(json!({"app": "web", "env": "prod"}));
        assert!(sel("  app = web ,  env  in ( prod , dev ) ").matches(&l));
        assert!(sel("app=web,   !missing").matches(&l));
        assert!(sel("env notin(dev)").matches(&l));
    }

    #[test]
    fn keyword_values_and_empty_values() {
        let l = labels(json!({"k": "in", "e": ""}));
        assert!(sel("k in (in,notin)").matches(&l));
        assert!(sel("k=in").matches(&l));
        assert!(sel("e=").matches(&l));
        assert!(sel("e in ()").matches(&l));
        assert!(sel("e in (a,)").matches(&l));
        assert!(sel("e in (,a)").matches(&l));
        assert!(!sel("k=").matches(&l));
    }

    #[test]
    fn prefixed_keys() {
        let l = labels(json!({"app.kubernetes.io/name": "web"}));
        assert!(sel("app.kubernetes.io/name=web").matches(&l));
        assert!(sel("app.kubernetes.io/name").matches(&l));
    }

    #[test]
    fn canonical_string_form() {
        assert_eq!(
            sel("z=1, a in (c,b,b), !m, k").to_string(),
            "a in (b,c),k,!m,z=1"
        );
        assert_eq!(sel("x==y,w!=v").to_string(), "w!=v,x==y");
        assert_eq!(sel("").to_string(), "");
    }

    #[test]
    fn syntax_errors() {
        let cases = [
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a=b,", "found '', expected: identifier after ','"),
            (
                "=b",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            ("a in b", "found 'b' expected: '('"),
            ("a in (b", "found '', expected: ',' or ')'"),
            (
                "a b",
                "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            ),
            (
                "a=(",
                "unable to parse requirement: found '(', expected: identifier",
            ),
        ];
        for (input, want) in cases {
            match LabelSelector::parse(input) {
                Ok(s) => panic!("{input:?} parsed as {s}"),
                Err(e) => assert!(e.contains(want), "{input:?}: got {e:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn invalid_keys_and_values() {
        let e = LabelSelector::parse("Bad Key=x").err().unwrap_or_default();
        assert!(e.starts_with("unable to parse requirement:"), "{e}");
        let e = LabelSelector::parse("-a=x").err().unwrap_or_default();
        assert!(
            e.starts_with("unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of alphanumeric characters"),
            "{e}"
        );
        let e = LabelSelector::parse("a=-x").err().unwrap_or_default();
        assert!(
            e.starts_with("unable to parse requirement: values[0][a]: Invalid value: \"-x\": a valid label must be"),
            "{e}"
        );
        let long = "v".repeat(64);
        let e = LabelSelector::parse(&format!("a={long}"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("must be no more than 63 characters"), "{e}");
        assert!(LabelSelector::parse("a/b/c=x").is_err());
        assert!(LabelSelector::parse("/b=x").is_err());
        assert!(LabelSelector::parse("ex_ample.com/b=x").is_err());
        assert!(LabelSelector::parse("a=b)").is_err());
        assert!(LabelSelector::parse("a in (b)(").is_err());
        assert_eq!(
            LabelSelector::parse("!a=b").err().unwrap_or_default(),
            "found '=', expected: ',' or 'end of string'"
        );
    }

    #[test]
    fn structured_selector() {
        let s = LabelSelector::try_from_label_selector_json(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["a"]}
            ]
        }));
        let s = match s {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            s.to_string(),
            "app=web,!canary,env in (prod,staging),tier,zone notin (a)"
        );
        assert!(s.matches(&labels(json!({"app": "web", "env": "prod", "tier": "x"}))));
        assert!(!s.matches(&labels(
            json!({"app": "web", "env": "prod", "tier": "x", "canary": "1"})
        )));
        assert!(!s.matches(&labels(
            json!({"app": "web", "env": "prod", "tier": "x", "zone": "a"})
        )));
    }

    #[test]
    fn structured_selector_edge_cases() {
        let nothing = LabelSelector::try_from_label_selector_json(&Value::Null);
        assert!(nothing
            .as_ref()
            .is_ok_and(|s| s.matches_nothing() && !s.is_empty()));
        assert!(nothing.is_ok_and(|s| !s.matches(&Map::new())));
        let all = LabelSelector::try_from_label_selector_json(&json!({}));
        assert!(all.is_ok_and(|s| s.is_empty() && s.matches(&Map::new())));
        let bad_op = LabelSelector::try_from_label_selector_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        );
        assert!(bad_op.is_err());
        let in_without_values = LabelSelector::try_from_label_selector_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
        );
        assert!(in_without_values
            .err()
            .unwrap_or_default()
            .contains("values set can't be empty"));
        let exists_with_values = LabelSelector::try_from_label_selector_json(
            &json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
        );
        assert!(exists_with_values.is_err());
        let bad_value =
            LabelSelector::try_from_label_selector_json(&json!({"matchLabels": {"a": "b c"}}));
        assert!(bad_value.is_err());
    }

    #[test]
    fn from_map_and_objects() {
        let s = LabelSelector::from_map(&labels(json!({"b": "2", "a": "1"})));
        assert_eq!(s.to_string(), "a=1,b=2");
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2", "c": "3"}}});
        assert!(s.matches_object(&obj));
        assert!(!s.matches_object(&json!({"metadata": {}})));
        assert!(s.matches_with(|k| match k {
            "a" => Some("1".to_string()),
            "b" => Some("2".to_string()),
            _ => None,
        }));
    }

    fn fsel(s: &str) -> FieldSelector {
        match FieldSelector::parse(s) {
            Ok(f) => f,
            Err(e) => panic!("{s:?} failed to parse: {e}"),
        }
    }

    fn getter<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |f| {
            pairs
                .iter()
                .find(|(k, _)| *k == f)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn field_selector_basics() {
        let obj = [("metadata.name", "web"), ("status.phase", "Running")];
        assert!(fsel("").is_empty());
        assert!(fsel("").matches(getter(&obj)));
        assert!(fsel("metadata.name=web").matches(getter(&obj)));
        assert!(fsel("metadata.name==web").matches(getter(&obj)));
        assert!(!fsel("metadata.name!=web").matches(getter(&obj)));
        assert!(fsel("status.phase!=Succeeded,status.phase!=Failed").matches(getter(&obj)));
        assert!(!fsel("metadata.name=web,status.phase=Pending").matches(getter(&obj)));
        let f = fsel("b=1,a!=2");
        let mut names: Vec<&str> = f.fields().collect();
        names.sort();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(f.requires_exact("b"), Some("1"));
        assert_eq!(f.requires_exact("a"), None);
    }

    #[test]
    fn field_selector_empty_values() {
        let unscheduled = [("spec.nodeName", "")];
        assert!(fsel("spec.nodeName=").matches(getter(&unscheduled)));
        assert!(!fsel("spec.nodeName!=").matches(getter(&unscheduled)));
        // A field the object lacks compares as "".
        assert!(fsel("spec.nodeName=").matches(|_| None));
        assert!(fsel("spec.nodeName!=").matches(getter(&[("spec.nodeName", "n1")])));
    }

    #[test]
    fn field_selector_escapes() {
        let f = fsel(r"metadata.name=a\,b\=c\\d,x=y");
        assert_eq!(f.requires_exact("metadata.name"), Some(r"a,b=c\d"));
        assert_eq!(f.requires_exact("x"), Some("y"));
        assert_eq!(
            FieldSelector::parse(r"a=b\x").err().unwrap_or_default(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\").err().unwrap_or_default(),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").err().unwrap_or_default(),
            "invalid field selector: unescaped character in value: 61"
        );
        // Round trip through Display.
        let s = f.to_string();
        assert_eq!(fsel(&s), f);
    }

    #[test]
    fn field_selector_errors() {
        assert_eq!(
            FieldSelector::parse("foo").err().unwrap_or_default(),
            "invalid selector: 'foo'; can't understand 'foo'"
        );
        assert!(FieldSelector::parse("a=b,foo").is_err());
        // Empty terms are skipped.
        assert!(fsel("a=b,,").matches(getter(&[("a", "b")])));
        // `!=` is found before `=`.
        let f = fsel("a!=b");
        assert_eq!(f.terms()[0].op, FieldOp::NotEquals);
        assert_eq!(f.terms()[0].field, "a");
    }
}
