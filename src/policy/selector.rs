//! Kubernetes label selectors: this module parses the `kubectl -l` string syntax, validates label
//! keys and values by Kubernetes' own rules (`labels::syntax`), matches selectors against label
//! sets and prints the canonical form. It owns the selector grammar, and it must not depend on
//! any other labelwall module but the label syntax (not policy compilation, inventory, the data
//! plane), on I/O or on logging.
//! Invariants: every [`Selector`] this module hands out holds only requirements that pass
//! Kubernetes' validation; its requirements are sorted by key (a stable sort, so requirements
//! on the same key keep their input order) and each requirement's values are sorted and free
//! of duplicates; its [`Display`](fmt::Display) output parses back to an equal selector; and
//! [`Selector::matches`] neither allocates nor panics.
//!
//! # Reference behaviour
//!
//! The grammar, lexer and matching rules follow `k8s.io/apimachinery/pkg/labels` (`Parse`,
//! `NewRequirement`, `Requirement.Matches`, `Requirement.String`); the key and value rules
//! follow `IsQualifiedName` and `IsValidLabelValue` (today `IsLabelKey` and `IsLabelValue` in
//! `k8s.io/apimachinery/pkg/api/validate/content`). A selector is a comma-separated list of
//! requirements, all of which must hold:
//!
//! | form            | operator                      | holds when                                  |
//! |-----------------|-------------------------------|---------------------------------------------|
//! | `k=v`, `k==v`   | [`Operator::Equals`], [`Operator::DoubleEquals`] | `k` is set to `v`        |
//! | `k!=v`          | [`Operator::NotEquals`]       | `k` is unset, or set to something but `v`   |
//! | `k in (a,b)`    | [`Operator::In`]              | `k` is set to one of the values             |
//! | `k notin (a,b)` | [`Operator::NotIn`]           | `k` is unset, or set to none of the values  |
//! | `k`             | [`Operator::Exists`]          | `k` is set                                  |
//! | `!k`            | [`Operator::DoesNotExist`]    | `k` is unset                                |
//! | `k>n`, `k<n`    | [`Operator::GreaterThan`], [`Operator::LessThan`] | `k` is set to an integer that compares |
//!
//! Upstream details that are easy to get wrong, and which this module reproduces:
//!
//! - Tokens are `(`, `)`, `,`, `=`, `==`, `!=`, `!`, `>`, `<` and the words `in` and `notin`;
//!   whitespace is exactly space, tab, CR and LF; anything else up to a special character or
//!   whitespace is one identifier (so `a||b` is a single, invalid, identifier).
//! - `in` and `notin` are operators only right after a key; elsewhere they are ordinary words,
//!   so `in=notin` and `x in (in)` are valid.
//! - An exact-match value may be empty (`x=`, `x!=`), and so may set members: `x in ()` means
//!   `x in ("")`, and `(,a)` or `(a,)` add `""` to the set. Kubernetes' list parser consumes
//!   commas in pairs, so an even run of commas right before `)` is rejected (`(a,,)`) while an
//!   odd one is accepted (`(a,)`, `(a,,,)`).
//! - `>` and `<` values must parse as `i64` *and* be valid label values, so `x>-1` is rejected.
//! - Requirements keep duplicates (`x,x` has two) and are ordered by key only.
//!
//! One deliberate deviation: apimachinery's lexer treats a NUL byte as the end of the input,
//! which can silently drop the rest of a selector (`"x=a\0,garbage"` means `x=a` there). A
//! policy appliance must not guess, so any NUL byte is an error here.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::Peekable;
use std::str::{CharIndices, FromStr};

use crate::labels::syntax::{validate_label_key, validate_label_value};

/// A set of labels, as carried by one identity: key to value.
pub type Labels = BTreeMap<String, String>;

/// A parsed label selector: the conjunction of its requirements. The empty selector matches
/// every label set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    /// Sorted by key (stable); see the module invariants.
    requirements: Vec<Requirement>,
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The label key, valid by [`validate_label_key`].
    pub key: String,
    /// How the label's value is compared with [`Requirement::values`].
    pub operator: Operator,
    /// Sorted and deduplicated; exactly one for the exact-match and integer operators, at
    /// least one for `in`/`notin`, none for exists/does-not-exist.
    pub values: Vec<String>,
}

/// The operator of a [`Requirement`]. `Equals` and `DoubleEquals` mean the same thing and are
/// kept apart only so that the canonical string reproduces the input's spelling, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `k=v`
    Equals,
    /// `k==v`
    DoubleEquals,
    /// `k!=v`
    NotEquals,
    /// `k in (a,b)`
    In,
    /// `k notin (a,b)`
    NotIn,
    /// `k`
    Exists,
    /// `!k`
    DoesNotExist,
    /// `k>n`
    GreaterThan,
    /// `k<n`
    LessThan,
}

/// Why a selector string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct SelectorError {
    /// Byte offset in the input of the token at fault (the input length for "end of input");
    /// always on a character boundary.
    pub position: usize,
    /// What was wrong, in one sentence.
    pub message: String,
}

impl SelectorError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        SelectorError { position, message: message.into() }
    }
}

impl Operator {
    /// How the operator is written in selectors and in messages.
    fn spelling(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        }
    }
}

impl Selector {
    /// Parses a selector string exactly as `labels.Parse` does (see the module docs for the
    /// one deliberate deviation, NUL bytes). The empty or all-whitespace string is
    /// [`Selector::everything`].
    ///
    /// # Errors
    ///
    /// A [`SelectorError`] for the first syntax error, invalid key or invalid value found.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let tokens = tokenize(input)?;
        let mut parser = Parser::new(tokens, input.len());
        let mut requirements = parser.parse_requirements()?;
        requirements.sort_by(|left, right| left.key.cmp(&right.key));
        Ok(Selector { requirements })
    }

    /// The selector that matches every label set.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Whether this selector places no restriction at all.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether every requirement holds for `labels`. Does not allocate.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|requirement| requirement.matches(labels))
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl Requirement {
    /// Builds a requirement with `NewRequirement`'s checks: a valid key, a value count that
    /// fits the operator, integer values for `>`/`<`, and valid label values. The values are
    /// sorted and deduplicated.
    ///
    /// # Errors
    ///
    /// One sentence naming the first rule broken.
    pub fn new<I>(key: &str, operator: Operator, values: I) -> Result<Requirement, String>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        validate_label_key(key).map_err(|reason| format!("invalid label key {key:?}: {reason}"))?;
        let mut values: Vec<String> = values.into_iter().map(Into::into).collect();
        values.sort();
        values.dedup();
        check_values(operator, &values).map_err(|problem| problem.message)?;
        Ok(Requirement { key: key.to_owned(), operator, values })
    }

    /// Whether this requirement holds for `labels`, by `Requirement.Matches`' rules. Does not
    /// allocate; a hand-built requirement whose values do not fit its operator never panics
    /// (an integer comparison without exactly one integer value simply does not hold).
    pub fn matches(&self, labels: &Labels) -> bool {
        let label_value = labels.get(self.key.as_str()).map(String::as_str);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                label_value.is_some_and(|value| self.has_value(value))
            }
            Operator::NotEquals | Operator::NotIn => {
                label_value.is_none_or(|value| !self.has_value(value))
            }
            Operator::Exists => label_value.is_some(),
            Operator::DoesNotExist => label_value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(Ok(label_number)) = label_value.map(str::parse::<i64>) else {
                    return false;
                };
                let [bound] = self.values.as_slice() else {
                    return false;
                };
                let Ok(bound) = bound.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    label_number > bound
                } else {
                    label_number < bound
                }
            }
        }
    }

    fn has_value(&self, value: &str) -> bool {
        self.values.iter().any(|candidate| candidate == value)
    }
}

impl fmt::Display for Selector {
    /// The canonical form: requirements by key, joined by `,` without spaces, e.g.
    /// `a=b,c in (x,y),!d` (what `Selector.String()` prints upstream).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, requirement) in self.requirements.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{requirement}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Requirement {
    /// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>n` or `k<n`, with
    /// the values in sorted order.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (before_values, after_values) = match self.operator {
            Operator::Exists => return formatter.write_str(&self.key),
            Operator::DoesNotExist => return write!(formatter, "!{}", self.key),
            Operator::In => (" in (", ")"),
            Operator::NotIn => (" notin (", ")"),
            Operator::Equals
            | Operator::DoubleEquals
            | Operator::NotEquals
            | Operator::GreaterThan
            | Operator::LessThan => (self.operator.spelling(), ""),
        };
        formatter.write_str(&self.key)?;
        formatter.write_str(before_values)?;
        // Values are sorted by construction; a hand-built requirement is sorted here on the
        // fly, as upstream's `safeSort` does, so the output stays canonical.
        let mut values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        if !values.is_sorted() {
            values.sort_unstable();
        }
        formatter.write_str(&values.join(","))?;
        formatter.write_str(after_values)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Selector, SelectorError> {
        Selector::parse(input)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    /// Reads a selector from a string, e.g. `selector: "app in (web,api),tier!=db"`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Selector::parse(&text).map_err(|error| {
            serde::de::Error::custom(format_args!("invalid label selector {text:?}: {error}"))
        })
    }
}

/// Why a requirement's values do not fit its operator.
#[derive(Debug)]
struct ValuesProblem {
    /// The value at fault, when a single value is to blame.
    value_index: Option<usize>,
    message: String,
}

/// `NewRequirement`'s checks of the values against the operator. `values` must already be
/// sorted and deduplicated, as upstream passes `sets.String.List()`.
fn check_values<V: AsRef<str>>(operator: Operator, values: &[V]) -> Result<(), ValuesProblem> {
    let whole = |message: String| ValuesProblem { value_index: None, message };
    let spelling = operator.spelling();
    match operator {
        Operator::In | Operator::NotIn if values.is_empty() => {
            return Err(whole(format!("'{spelling}' needs at least one value")));
        }
        Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => {
            return Err(whole(format!("'{spelling}' needs exactly one value")));
        }
        Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
            return Err(whole("exists and does-not-exist requirements take no values".to_owned()));
        }
        Operator::GreaterThan | Operator::LessThan => {
            if values.len() != 1 {
                return Err(whole(format!("'{spelling}' needs exactly one value")));
            }
            for (index, value) in values.iter().enumerate() {
                let value = value.as_ref();
                if value.parse::<i64>().is_err() {
                    return Err(ValuesProblem {
                        value_index: Some(index),
                        message: format!(
                            "the value of '{spelling}' must be an integer, not {value:?}"
                        ),
                    });
                }
            }
        }
        _ => {}
    }
    for (index, value) in values.iter().enumerate() {
        let value = value.as_ref();
        validate_label_value(value).map_err(|reason| ValuesProblem {
            value_index: Some(index),
            message: format!("invalid label value {value:?}: {reason}"),
        })?;
    }
    Ok(())
}

/// The lexer's token kinds. `In` and `NotIn` are what the words `in` and `notin` lex to; the
/// parser reads them as identifiers everywhere except in operator position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    EndOfInput,
    Identifier,
    In,
    NotIn,
    OpenParen,
    CloseParen,
    Comma,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token<'a> {
    kind: TokenKind,
    text: &'a str,
    /// Byte offset of the token's first character.
    position: usize,
}

/// Whitespace as the upstream lexer knows it: nothing else (no vertical tab, no Unicode).
fn is_selector_whitespace(character: char) -> bool {
    matches!(character, ' ' | '\t' | '\r' | '\n')
}

/// Characters that end an identifier and start an operator or punctuation token.
fn is_special_symbol(character: char) -> bool {
    matches!(character, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits `input` into tokens, ending with one `EndOfInput` token. Fails only on a NUL byte.
fn tokenize(input: &str) -> Result<Vec<Token<'_>>, SelectorError> {
    let mut characters: Peekable<CharIndices<'_>> = input.char_indices().peekable();
    let mut tokens = Vec::new();
    while let Some((start, character)) = characters.next() {
        if character == '\0' {
            return Err(SelectorError::new(start, "a label selector must not contain a NUL byte"));
        }
        if is_selector_whitespace(character) {
            continue;
        }
        let kind = if is_special_symbol(character) {
            // Longest match: only `==` and `!=` are two characters long.
            let doubled = matches!(character, '=' | '!')
                && characters.next_if(|&(_, next)| next == '=').is_some();
            match (character, doubled) {
                ('=', true) => TokenKind::DoubleEquals,
                ('!', true) => TokenKind::NotEquals,
                ('=', false) => TokenKind::Equals,
                ('!', false) => TokenKind::Bang,
                ('(', _) => TokenKind::OpenParen,
                (')', _) => TokenKind::CloseParen,
                (',', _) => TokenKind::Comma,
                ('>', _) => TokenKind::GreaterThan,
                _ => TokenKind::LessThan,
            }
        } else {
            while characters
                .next_if(|&(_, next)| {
                    !is_special_symbol(next) && !is_selector_whitespace(next) && next != '\0'
                })
                .is_some()
            {}
            TokenKind::Identifier
        };
        let end = characters.peek().map_or(input.len(), |&(offset, _)| offset);
        // Both ends come from `char_indices` (or the input length), so they are boundaries.
        let text = &input[start..end];
        let kind = match (kind, text) {
            (TokenKind::Identifier, "in") => TokenKind::In,
            (TokenKind::Identifier, "notin") => TokenKind::NotIn,
            _ => kind,
        };
        tokens.push(Token { kind, text, position: start });
    }
    tokens.push(Token { kind: TokenKind::EndOfInput, text: "", position: input.len() });
    Ok(tokens)
}

/// `in` and `notin` read as plain words, which is how upstream sees every token that is not
/// in operator position (its `Values` parser context).
fn as_word(token: Token<'_>) -> Token<'_> {
    match token.kind {
        TokenKind::In | TokenKind::NotIn => Token { kind: TokenKind::Identifier, ..token },
        _ => token,
    }
}

/// A token as it appears in an error message.
fn describe(token: Token<'_>) -> String {
    match token.kind {
        TokenKind::EndOfInput => "end of input".to_owned(),
        _ => format!("'{}'", token.text),
    }
}

/// A value and where it came from; an empty value implied by `()`, `(,` or `x=` points at
/// the token that implied it.
#[derive(Debug, Clone, Copy)]
struct ValueAt<'a> {
    text: &'a str,
    position: usize,
}

impl AsRef<str> for ValueAt<'_> {
    fn as_ref(&self) -> &str {
        self.text
    }
}

/// Recursive-descent parser over the token list, mirroring upstream's one-token lookahead.
struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    cursor: usize,
    /// Returned once the cursor has run past the last token, so reads never fail.
    end: Token<'a>,
}

impl<'a> Parser<'a> {
    fn new(tokens: Vec<Token<'a>>, input_len: usize) -> Self {
        let end = Token { kind: TokenKind::EndOfInput, text: "", position: input_len };
        Parser { tokens, cursor: 0, end }
    }

    fn peek_raw(&self) -> Token<'a> {
        self.tokens.get(self.cursor).copied().unwrap_or(self.end)
    }

    /// The next token, `in`/`notin` read as words.
    fn peek(&self) -> Token<'a> {
        as_word(self.peek_raw())
    }

    /// Consumes the next token, `in`/`notin` read as words.
    fn advance(&mut self) -> Token<'a> {
        let token = self.peek();
        self.cursor = self.cursor.saturating_add(1);
        token
    }

    /// Consumes the next token, `in`/`notin` read as operators.
    fn advance_operator(&mut self) -> Token<'a> {
        let token = self.peek_raw();
        self.cursor = self.cursor.saturating_add(1);
        token
    }

    /// `requirement ("," requirement)*`, or nothing at all.
    fn parse_requirements(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().kind == TokenKind::EndOfInput {
            return Ok(requirements);
        }
        loop {
            let start = self.peek();
            if !matches!(start.kind, TokenKind::Identifier | TokenKind::Bang) {
                let expected = if requirements.is_empty() {
                    "a label key, '!' or end of input"
                } else {
                    "a label key or '!' after ','"
                };
                let found = describe(start);
                return Err(SelectorError::new(
                    start.position,
                    format!("expected {expected}, found {found}"),
                ));
            }
            requirements.push(self.parse_requirement()?);
            let separator = self.advance();
            match separator.kind {
                TokenKind::EndOfInput => return Ok(requirements),
                TokenKind::Comma => {}
                _ => {
                    let found = describe(separator);
                    return Err(SelectorError::new(
                        separator.position,
                        format!("expected ',' or end of input after a requirement, found {found}"),
                    ));
                }
            }
        }
    }

    /// `["!"] key [operator values]`
    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let first = self.advance();
        let negated = first.kind == TokenKind::Bang;
        let key = if negated { self.advance() } else { first };
        if key.kind != TokenKind::Identifier {
            let found = describe(key);
            return Err(SelectorError::new(
                key.position,
                format!("expected a label key, found {found}"),
            ));
        }
        validate_label_key(key.text).map_err(|reason| {
            SelectorError::new(key.position, format!("invalid label key {:?}: {reason}", key.text))
        })?;
        let next = self.peek();
        let key_stands_alone = matches!(next.kind, TokenKind::EndOfInput | TokenKind::Comma);
        if negated {
            if !key_stands_alone {
                let found = describe(next);
                return Err(SelectorError::new(
                    next.position,
                    format!("'!{}' takes no operator or values, found {found}", key.text),
                ));
            }
            return Ok(bare_requirement(key.text, Operator::DoesNotExist));
        }
        if key_stands_alone {
            return Ok(bare_requirement(key.text, Operator::Exists));
        }
        let operator_token = self.advance_operator();
        let operator = match operator_token.kind {
            TokenKind::Equals => Operator::Equals,
            TokenKind::DoubleEquals => Operator::DoubleEquals,
            TokenKind::NotEquals => Operator::NotEquals,
            TokenKind::In => Operator::In,
            TokenKind::NotIn => Operator::NotIn,
            TokenKind::GreaterThan => Operator::GreaterThan,
            TokenKind::LessThan => Operator::LessThan,
            _ => {
                let found = describe(operator_token);
                return Err(SelectorError::new(
                    operator_token.position,
                    format!(
                        "expected an operator (=, ==, !=, in, notin, >, <) after label key {:?}, \
                         found {found}",
                        key.text
                    ),
                ));
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_value_set(operator)?,
            _ => vec![self.parse_single_value(operator)?],
        };
        finish_requirement(key.text, operator, operator_token.position, values)
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`: an identifier, or nothing (the empty
    /// value) when the requirement ends right there.
    fn parse_single_value(&mut self, operator: Operator) -> Result<ValueAt<'a>, SelectorError> {
        let next = self.peek();
        match next.kind {
            TokenKind::EndOfInput | TokenKind::Comma => {
                Ok(ValueAt { text: "", position: next.position })
            }
            TokenKind::Identifier => {
                self.advance();
                Ok(ValueAt { text: next.text, position: next.position })
            }
            _ => {
                let found = describe(next);
                Err(SelectorError::new(
                    next.position,
                    format!("expected a value after '{}', found {found}", operator.spelling()),
                ))
            }
        }
    }

    /// `"(" values ")"` after `in`/`notin`, with upstream's treatment of empty members:
    /// `()` is `("")`, a leading or trailing comma adds `""`, and commas are consumed in
    /// pairs, so an even run of them right before `)` is an error.
    fn parse_value_set(&mut self, operator: Operator) -> Result<Vec<ValueAt<'a>>, SelectorError> {
        let open = self.advance();
        if open.kind != TokenKind::OpenParen {
            let found = describe(open);
            return Err(SelectorError::new(
                open.position,
                format!("expected '(' after '{}', found {found}", operator.spelling()),
            ));
        }
        let first = self.peek();
        match first.kind {
            TokenKind::CloseParen => {
                self.advance();
                return Ok(vec![ValueAt { text: "", position: first.position }]);
            }
            TokenKind::Identifier | TokenKind::Comma => {}
            _ => {
                let found = describe(first);
                return Err(SelectorError::new(
                    first.position,
                    format!("expected a value, ',' or ')' after '(', found {found}"),
                ));
            }
        }
        let mut values = Vec::new();
        loop {
            let token = self.advance();
            match token.kind {
                TokenKind::Identifier => {
                    values.push(ValueAt { text: token.text, position: token.position });
                    let next = self.peek();
                    match next.kind {
                        TokenKind::Comma => {}
                        TokenKind::CloseParen => {
                            self.advance();
                            return Ok(values);
                        }
                        _ => {
                            let found = describe(next);
                            return Err(SelectorError::new(
                                next.position,
                                format!("expected ',' or ')' after a value, found {found}"),
                            ));
                        }
                    }
                }
                TokenKind::Comma => {
                    if values.is_empty() {
                        // `(,`: an empty member before the first comma.
                        values.push(ValueAt { text: "", position: token.position });
                    }
                    let next = self.peek();
                    match next.kind {
                        TokenKind::CloseParen => {
                            // `,)`: an empty member after the last comma.
                            values.push(ValueAt { text: "", position: next.position });
                            self.advance();
                            return Ok(values);
                        }
                        TokenKind::Comma => {
                            // `,,`: an empty member between two commas, both consumed.
                            self.advance();
                            values.push(ValueAt { text: "", position: next.position });
                        }
                        _ => {}
                    }
                }
                TokenKind::CloseParen => {
                    return Err(SelectorError::new(
                        token.position,
                        "expected a value or ',' before ')': like Kubernetes, an even number \
                         of commas right before ')' is rejected",
                    ));
                }
                _ => {
                    let found = describe(token);
                    return Err(SelectorError::new(
                        token.position,
                        format!("expected a value or ',' in a value list, found {found}"),
                    ));
                }
            }
        }
    }
}

fn bare_requirement(key: &str, operator: Operator) -> Requirement {
    Requirement { key: key.to_owned(), operator, values: Vec::new() }
}

/// Sorts and deduplicates the values (upstream collects them in a set), then applies
/// `NewRequirement`'s value checks, blaming the offending value's position.
fn finish_requirement(
    key: &str,
    operator: Operator,
    operator_position: usize,
    mut values: Vec<ValueAt<'_>>,
) -> Result<Requirement, SelectorError> {
    values.sort_by(|left, right| left.text.cmp(right.text));
    values.dedup_by(|later, earlier| later.text == earlier.text);
    check_values(operator, &values).map_err(|problem| {
        let position = problem
            .value_index
            .and_then(|index| values.get(index))
            .map_or(operator_position, |value| value.position);
        SelectorError::new(position, problem.message)
    })?;
    Ok(Requirement {
        key: key.to_owned(),
        operator,
        values: values.iter().map(|value| value.text.to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What parsing an input must give.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        /// Accepted, with this canonical (`Display`) form.
        Accepts(&'static str),
        /// Rejected.
        Rejects,
    }
    use Want::{Accepts, Rejects};

    /// Parse conformance cases, grouped by the upstream test they come from. Upstream files
    /// are in `k8s.io/apimachinery` (kubernetes/kubernetes `staging/src/k8s.io/apimachinery`):
    /// `pkg/labels/selector_test.go` unless stated otherwise.
    const PARSE_CASES: &[(&str, &[(&str, Want)])] = &[
        (
            // Good strings must re-print as the input with spaces removed; bad ones fail.
            "TestSelectorParse",
            &[
                ("x=a,y=b,z=c", Accepts("x=a,y=b,z=c")),
                ("", Accepts("")),
                ("x!=a,y=b", Accepts("x!=a,y=b")),
                ("x=", Accepts("x=")),
                ("x= ", Accepts("x=")),
                ("x=,z= ", Accepts("x=,z=")),
                ("x= ,z= ", Accepts("x=,z=")),
                ("!x", Accepts("!x")),
                ("x>1", Accepts("x>1")),
                ("x>1,z<5", Accepts("x>1,z<5")),
                ("x=a||y=b", Rejects),
                ("x==a==b", Rejects),
                ("!x=a", Rejects),
                ("x<a", Rejects),
            ],
        ),
        (
            "TestDeterministicParse",
            &[("x=a,a=x", Accepts("a=x,x=a")), ("a=x,x=a", Accepts("a=x,x=a"))],
        ),
        (
            // The valid selectors print as given; the invalid one (trailing ',') must not parse.
            "TestToString",
            &[
                ("x in (abc,def),y notin (jkl),z", Accepts("x in (abc,def),y notin (jkl),z")),
                ("x notin (abc,def),y!=jkl,!z", Accepts("x notin (abc,def),y!=jkl,!z")),
                ("x in (abc,def),", Rejects),
                (
                    "x notin (abc),y in (jkl,mno),z notin ()",
                    Accepts("x notin (abc),y in (jkl,mno),z notin ()"),
                ),
                ("x=abc,y==jkl,z!=a,z", Accepts("x=abc,y==jkl,z!=a,z")),
                ("x>2,y<8,z", Accepts("x>2,y<8,z")),
            ],
        ),
        (
            // The invalid inputs; the valid ones are in STRUCTURE_CASES.
            "TestSetSelectorParser",
            &[
                ("x=a||y=b", Rejects),
                ("x,,y", Rejects),
                (",x,y", Rejects),
                ("x nott in (y)", Rejects),
                ("a in (xyz),", Rejects),
                ("a in (xyz)b notin ()", Rejects),
                ("a in (xyz abc)", Rejects),
                ("a notin(", Rejects),
                ("a (", Rejects),
                ("(", Rejects),
            ],
        ),
        (
            // Not upstream cases: behaviour read off selector.go's lexer and parser.
            "labelwall, from reading selector.go",
            &[
                ("in", Accepts("in")),
                ("!in", Accepts("!in")),
                ("notin", Accepts("notin")),
                ("in in (in)", Accepts("in in (in)")),
                ("notin notin (notin,in)", Accepts("notin notin (in,notin)")),
                ("x=in", Accepts("x=in")),
                ("x in(a)", Accepts("x in (a)")),
                ("x notin(a)", Accepts("x notin (a)")),
                ("xin(a)", Rejects),
                ("x in (,)", Accepts("x in ()")),
                ("x in (,,)", Rejects),
                ("x in (,,,)", Accepts("x in ()")),
                ("x in (a,)", Accepts("x in (,a)")),
                ("x in (a,,)", Rejects),
                ("x in (a,,,)", Accepts("x in (,a)")),
                ("x in (a,,,,)", Rejects),
                ("x in (a,,b)", Accepts("x in (,a,b)")),
                ("x in (a,,,b)", Accepts("x in (,a,b)")),
                ("x in (b,a,b)", Accepts("x in (a,b)")),
                ("x in (a", Rejects),
                ("x in (,", Rejects),
                ("x in a", Rejects),
                ("x in (a=b)", Rejects),
                ("x in (a)(b)", Rejects),
                ("x=(a)", Rejects),
                ("x (a)", Rejects),
                ("x y", Rejects),
                ("x=a b", Rejects),
                ("x=a=b", Rejects),
                ("x==", Accepts("x==")),
                ("x!=", Accepts("x!=")),
                ("x == a", Accepts("x==a")),
                ("x>01", Accepts("x>01")),
                ("x>9223372036854775807", Accepts("x>9223372036854775807")),
                ("x>9223372036854775808", Rejects),
                ("x>-1", Rejects),
                ("x>+1", Rejects),
                ("x>", Rejects),
                ("x<", Rejects),
                ("x>=1", Rejects),
                ("x=>1", Rejects),
                ("x in (1),x>0", Accepts("x in (1),x>0")),
                ("! x", Accepts("!x")),
                ("!", Rejects),
                ("!!x", Rejects),
                ("x!", Rejects),
                ("!=x", Rejects),
                ("!x in (a)", Rejects),
                ("!x,y", Accepts("!x,y")),
                (" \t\r\n ", Accepts("")),
                ("=", Rejects),
                (",", Rejects),
                (")", Rejects),
                ("x,", Rejects),
                ("x\u{b}", Rejects),
                ("x\u{a0}", Rejects),
                ("x=\u{e9}", Rejects),
                ("x=a\0", Rejects),
                ("\0", Rejects),
                ("a/b/c", Rejects),
                ("/a", Rejects),
                ("a/", Rejects),
                ("Example.com/x", Rejects),
                ("example.com/X_y.z=A-_.z", Accepts("example.com/X_y.z=A-_.z")),
                ("x=-a", Rejects),
                ("x=a-", Rejects),
                ("z,a,m", Accepts("a,m,z")),
                ("x,x", Accepts("x,x")),
                ("b=1,a,b!=2,!b", Accepts("a,b=1,b!=2,!b")),
            ],
        ),
    ];

    /// Valid inputs from upstream `TestSetSelectorParser` with the requirements they must give
    /// (key, operator, sorted values), in selector order.
    type ExpectedRequirement = (&'static str, Operator, &'static [&'static str]);
    const STRUCTURE_CASES: &[(&str, &[ExpectedRequirement])] = &[
        ("", &[]),
        ("\rx", &[("x", Operator::Exists, &[])]),
        (
            "this-is-a-dns.domain.com/key-with-dash",
            &[("this-is-a-dns.domain.com/key-with-dash", Operator::Exists, &[])],
        ),
        (
            "this-is-another-dns.domain.com/key-with-dash in (so,what)",
            &[("this-is-another-dns.domain.com/key-with-dash", Operator::In, &["so", "what"])],
        ),
        (
            "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
            &[("0.1.2.domain/99", Operator::NotIn, &["10.10.100.1", "tick.tack.clock"])],
        ),
        ("foo  in\t (abc)", &[("foo", Operator::In, &["abc"])]),
        ("x notin\n (abc)", &[("x", Operator::NotIn, &["abc"])]),
        ("x  notin\t\t\t(abc,def)", &[("x", Operator::NotIn, &["abc", "def"])]),
        ("x in (abc,def)", &[("x", Operator::In, &["abc", "def"])]),
        ("x in (abc,)", &[("x", Operator::In, &["", "abc"])]),
        ("x in ()", &[("x", Operator::In, &[""])]),
        (
            "x notin (abc,,def),bar,z in (),w",
            &[
                ("bar", Operator::Exists, &[]),
                ("w", Operator::Exists, &[]),
                ("x", Operator::NotIn, &["", "abc", "def"]),
                ("z", Operator::In, &[""]),
            ],
        ),
        ("x,y in (a)", &[("x", Operator::Exists, &[]), ("y", Operator::In, &["a"])]),
        ("x=a", &[("x", Operator::Equals, &["a"])]),
        ("x>1", &[("x", Operator::GreaterThan, &["1"])]),
        ("x<7", &[("x", Operator::LessThan, &["7"])]),
        ("x=a,y!=b", &[("x", Operator::Equals, &["a"]), ("y", Operator::NotEquals, &["b"])]),
        (
            "x=a,y!=b,z in (h,i,j)",
            &[
                ("x", Operator::Equals, &["a"]),
                ("y", Operator::NotEquals, &["b"]),
                ("z", Operator::In, &["h", "i", "j"]),
            ],
        ),
        ("x notin ( )", &[("x", Operator::NotIn, &[""])]),
        ("x notin (, a)", &[("x", Operator::NotIn, &["", "a"])]),
        ("a ", &[("a", Operator::Exists, &[])]),
        ("a in (x,y,notin, z,in)", &[("a", Operator::In, &["in", "notin", "x", "y", "z"])]),
        // labelwall: `==` stays distinct from `=`.
        ("x==a", &[("x", Operator::DoubleEquals, &["a"])]),
    ];

    /// Matching cases: selector, labels, whether it must match.
    type MatchCase = (&'static str, &'static [(&'static str, &'static str)], bool);
    const FOO_BAR_BAZ_BLAH: &[(&str, &str)] = &[("foo", "bar"), ("baz", "blah")];
    const MATCH_CASES: &[(&str, &[MatchCase])] = &[
        (
            "TestSelectorMatches",
            &[
                ("", &[("x", "y")], true),
                ("x=y", &[("x", "y")], true),
                ("x=y,z=w", &[("x", "y"), ("z", "w")], true),
                ("x!=y,z!=w", &[("x", "z"), ("z", "a")], true),
                ("notin=in", &[("notin", "in")], true),
                ("x", &[("x", "z")], true),
                ("!x", &[("y", "z")], true),
                ("x>1", &[("x", "2")], true),
                ("x<1", &[("x", "0")], true),
                ("x=z", &[], false),
                ("x=y", &[("x", "z")], false),
                ("x=y,z=w", &[("x", "w"), ("z", "w")], false),
                ("x!=y,z!=w", &[("x", "z"), ("z", "w")], false),
                ("x", &[("y", "z")], false),
                ("!x", &[("x", "z")], false),
                ("x>1", &[("x", "0")], false),
                ("x<1", &[("x", "2")], false),
                ("foo=bar", FOO_BAR_BAZ_BLAH, true),
                ("baz=blah", FOO_BAR_BAZ_BLAH, true),
                ("foo=bar,baz=blah", FOO_BAR_BAZ_BLAH, true),
                ("foo=blah", FOO_BAR_BAZ_BLAH, false),
                ("baz=bar", FOO_BAR_BAZ_BLAH, false),
                ("foo=bar,foobar=bar,baz=blah", FOO_BAR_BAZ_BLAH, false),
            ],
        ),
        (
            // SelectorFromSet selectors, written as the equivalent strings.
            "TestSetMatches",
            &[
                ("", FOO_BAR_BAZ_BLAH, true),
                ("foo=bar", FOO_BAR_BAZ_BLAH, true),
                ("baz=blah", FOO_BAR_BAZ_BLAH, true),
                ("foo=bar,baz=blah", FOO_BAR_BAZ_BLAH, true),
            ],
        ),
        (
            // Requirements built with NewRequirement, written as the equivalent strings.
            "TestRequirementSelectorMatching",
            &[
                ("x in (foo),y notin (alpha)", &[("x", "foo"), ("y", "baz")], true),
                ("x in (foo),y in (alpha)", &[("x", "foo"), ("y", "baz")], false),
                ("x notin (),y", &[("y", "")], true),
                ("!x,y", &[("y", "")], true),
                ("x notin (),!y", &[("y", "")], false),
                ("x in ()", &[("y", "baz")], false),
                ("z>1", &[("z", "2")], true),
                ("z>1", &[("z", "v2")], false),
            ],
        ),
        (
            // Not upstream cases: Requirement.Matches' rules read off selector.go.
            "labelwall, from reading selector.go",
            &[
                ("x in (a,b)", &[("x", "b")], true),
                ("x in (a,b)", &[("x", "c")], false),
                ("x in (a,b)", &[], false),
                ("x notin (a,b)", &[], true),
                ("x notin (a,b)", &[("x", "a")], false),
                ("x notin (a,b)", &[("x", "c")], true),
                ("x!=a", &[], true),
                ("x==y", &[("x", "y")], true),
                ("x=", &[("x", "")], true),
                ("x=", &[], false),
                ("x!=", &[], true),
                ("x!=", &[("x", "")], false),
                ("x in ()", &[("x", "")], true),
                ("x in (,a)", &[("x", "")], true),
                ("!x", &[], true),
                ("x", &[("x", "")], true),
                ("x>1", &[], false),
                ("x>1", &[("x", "1")], false),
                ("x<1", &[("x", "1")], false),
                ("x>1", &[("x", "+2")], true),
                ("x<0", &[("x", "-5")], true),
                ("x>1", &[("x", " 2")], false),
                ("x>1", &[("x", "99999999999999999999")], false),
                ("x<9223372036854775807", &[("x", "-9223372036854775808")], true),
                ("x<1", &[("x", "")], false),
                ("a=1,b in (2)", &[("a", "1"), ("b", "2"), ("c", "3")], true),
                ("a=1,b in (2)", &[("a", "1")], false),
            ],
        ),
    ];

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|&(key, value)| (key.to_owned(), value.to_owned())).collect()
    }

    #[test]
    fn selector_values_follow_the_label_value_syntax() {
        let long_value = "a".repeat(63);
        let at_limit = format!("x in ({long_value})");
        assert!(Selector::parse(&at_limit).is_ok());
        assert!(Selector::parse(&format!("x in ({long_value}a)")).is_err());
    }

    #[test]
    fn parse_conformance_with_upstream_and_selector_go() {
        let mut failures = Vec::new();
        let mut case_count = 0;
        for &(source, cases) in PARSE_CASES {
            for &(input, want) in cases {
                case_count += 1;
                let outcome = Selector::parse(input);
                let ok = match (want, &outcome) {
                    (Accepts(canonical), Ok(selector)) => {
                        selector.to_string() == canonical
                            && Selector::parse(canonical).as_ref() == Ok(selector)
                    }
                    (Rejects, Err(_)) => true,
                    _ => false,
                };
                if !ok {
                    let got = outcome.map(|selector| selector.to_string());
                    failures.push(format!("[{source}] {input:?}: want {want:?}, got {got:?}"));
                }
            }
        }
        assert!(failures.is_empty(), "{} of {case_count} failed:\n{}", failures.len(), {
            failures.join("\n")
        });
    }

    #[test]
    fn parse_structure_matches_upstream_set_selector_parser() {
        for &(input, expected) in STRUCTURE_CASES {
            let selector = Selector::parse(input)
                .unwrap_or_else(|error| panic!("TestSetSelectorParser {input:?}: {error}"));
            let got: Vec<(&str, Operator, Vec<&str>)> = selector
                .requirements()
                .iter()
                .map(|requirement| {
                    let values = requirement.values.iter().map(String::as_str).collect();
                    (requirement.key.as_str(), requirement.operator, values)
                })
                .collect();
            let want: Vec<(&str, Operator, Vec<&str>)> = expected
                .iter()
                .map(|&(key, operator, values)| (key, operator, values.to_vec()))
                .collect();
            assert_eq!(got, want, "TestSetSelectorParser {input:?}");
        }
    }

    #[test]
    fn match_conformance_with_upstream_and_selector_go() {
        let mut failures = Vec::new();
        for &(source, cases) in MATCH_CASES {
            for &(input, pairs, want) in cases {
                match Selector::parse(input) {
                    Ok(selector) if selector.matches(&labels(pairs)) == want => {}
                    outcome => failures.push(format!(
                        "[{source}] {input:?} on {pairs:?}: want match={want}, got {outcome:?}"
                    )),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn everything_matches_anything_and_is_empty() {
        // Upstream TestEverything, TestNilMapIsValid, TestSetIsEmpty.
        let everything = Selector::everything();
        assert!(everything.matches(&labels(&[("x", "y")])));
        assert!(everything.matches(&Labels::new()));
        assert!(everything.is_everything());
        assert!(everything.requirements().is_empty());
        assert_eq!(everything.to_string(), "");
        assert_eq!(Selector::parse("").as_ref(), Ok(&everything));
        assert_eq!(Selector::parse(" \t").as_ref(), Ok(&everything));
        assert_eq!(Selector::default(), everything);
        assert!(Selector::parse("x").is_ok_and(|selector| !selector.is_everything()));
    }

    /// Token kinds of `input`, including the final `EndOfInput`.
    fn token_kinds(input: &str) -> Vec<TokenKind> {
        tokenize(input).unwrap_or_default().iter().map(|token| token.kind).collect()
    }

    #[test]
    fn lexer_single_tokens_match_upstream_test_lexer() {
        use TokenKind::*;
        let cases = [
            (",", Comma),
            ("notin", NotIn),
            ("in", In),
            ("=", Equals),
            ("==", DoubleEquals),
            (">", GreaterThan),
            ("<", LessThan),
            ("!", Bang),
            ("!=", NotEquals),
            ("(", OpenParen),
            (")", CloseParen),
            ("~", Identifier),
            ("||", Identifier),
        ];
        assert_eq!(token_kinds(""), [EndOfInput]);
        for (input, kind) in cases {
            let tokens = tokenize(input).unwrap_or_default();
            let first = tokens.first().copied();
            assert_eq!(first.map(|token| (token.kind, token.text)), Some((kind, input)), "{input}");
            assert_eq!(tokens.len(), 2, "{input}: one token and the end");
        }
    }

    #[test]
    fn lexer_sequences_match_upstream_lexer_sequence_and_parser_lookahead() {
        use TokenKind::*;
        // TestLexerSequence and TestParserLookahead (the latter also counts the end token).
        let cases: &[(&str, &[TokenKind])] = &[
            ("key in ( value )", &[Identifier, In, OpenParen, Identifier, CloseParen]),
            ("key notin ( value )", &[Identifier, NotIn, OpenParen, Identifier, CloseParen]),
            (
                "key in ( value1, value2 )",
                &[Identifier, In, OpenParen, Identifier, Comma, Identifier, CloseParen],
            ),
            ("key", &[Identifier]),
            ("!key", &[Bang, Identifier]),
            ("()", &[OpenParen, CloseParen]),
            ("", &[]),
            ("x in (),y", &[Identifier, In, OpenParen, CloseParen, Comma, Identifier]),
            (
                "== != (), = notin",
                &[DoubleEquals, NotEquals, OpenParen, CloseParen, Comma, Equals, NotIn],
            ),
            ("key>2", &[Identifier, GreaterThan, Identifier]),
            ("key<1", &[Identifier, LessThan, Identifier]),
            // labelwall: longest match is two characters at most, then lexing resumes.
            ("!==", &[NotEquals, Equals]),
            ("===", &[DoubleEquals, Equals]),
            (">=<", &[GreaterThan, Equals, LessThan]),
            ("!!", &[Bang, Bang]),
            ("a\u{b}b c", &[Identifier, Identifier]),
        ];
        for &(input, expected) in cases {
            let mut want = expected.to_vec();
            want.push(EndOfInput);
            assert_eq!(token_kinds(input), want, "{input:?}");

            // TestParserLookahead: peeking then consuming yields the same token each time.
            let tokens = tokenize(input).unwrap_or_default();
            let mut parser = Parser::new(tokens.clone(), input.len());
            for token in &tokens {
                let peeked = parser.peek_raw();
                assert_eq!(parser.advance_operator(), peeked);
                assert_eq!(peeked, *token);
            }
            assert_eq!(parser.advance().kind, EndOfInput, "reading past the end stays there");
        }
    }

    #[test]
    fn in_and_notin_are_words_outside_operator_position() {
        let tokens = tokenize("in").unwrap_or_default();
        let parser = Parser::new(tokens, 2);
        assert_eq!(parser.peek_raw().kind, TokenKind::In);
        assert_eq!(parser.peek().kind, TokenKind::Identifier);
    }

    #[test]
    fn requirement_constructor_matches_upstream() {
        let long_key = "a".repeat(254);
        // TestRequirementConstructor: key, operator, values, valid.
        let cases: Vec<(&str, Operator, Vec<&str>, bool)> = vec![
            ("x", Operator::In, vec![], false),
            ("x", Operator::NotIn, vec![], false),
            ("x", Operator::In, vec!["foo"], true),
            ("x", Operator::NotIn, vec!["foo"], true),
            ("x", Operator::Exists, vec![], true),
            ("x", Operator::DoesNotExist, vec![], true),
            ("1foo", Operator::In, vec!["bar"], true),
            ("1234", Operator::In, vec!["bar"], true),
            ("y", Operator::GreaterThan, vec!["1"], true),
            ("z", Operator::LessThan, vec!["6"], true),
            ("foo", Operator::GreaterThan, vec!["bar"], false),
            ("barz", Operator::LessThan, vec!["blah"], false),
            (&long_key, Operator::Exists, vec![], false),
            // labelwall: the remaining NewRequirement rules.
            ("x", Operator::Equals, vec![], false),
            ("x", Operator::NotEquals, vec!["a", "b"], false),
            ("x", Operator::DoubleEquals, vec!["a", "a"], true),
            ("x", Operator::Exists, vec!["a"], false),
            ("x", Operator::DoesNotExist, vec![""], false),
            ("x", Operator::GreaterThan, vec!["1", "2"], false),
            ("x", Operator::GreaterThan, vec![], false),
            ("x", Operator::In, vec!["bad value"], false),
            ("Bad/x", Operator::Exists, vec![], false),
        ];
        for (key, operator, values, valid) in cases {
            let outcome = Requirement::new(key, operator, values.iter().copied());
            assert_eq!(outcome.is_ok(), valid, "{key:?} {operator:?} {values:?}: {outcome:?}");
        }
        let built = Requirement::new("x", Operator::In, ["b", "a", "b", ""]);
        assert_eq!(
            built,
            Ok(Requirement {
                key: "x".to_owned(),
                operator: Operator::In,
                values: vec![String::new(), "a".to_owned(), "b".to_owned()],
            })
        );
        assert_eq!(built.map(|requirement| requirement.to_string()), Ok("x in (,a,b)".to_owned()));
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let cases = [
            ("x=a||y=b", 2),
            ("x==a==b", 4),
            ("x,,y", 2),
            (",x", 0),
            ("a in (xyz),", 11),
            ("x in (a,,)", 9),
            ("x>a", 2),
            ("x in (ok,Bad_)", 9),
            ("ok,Bad_", 3),
            ("x nott in (y)", 2),
            ("!x=a", 2),
            ("x=a\0", 3),
            ("\u{e9}=a", 0),
            ("x=\u{e9}", 2),
        ];
        for (input, position) in cases {
            let error = Selector::parse(input).unwrap_err();
            assert_eq!(error.position, position, "{input:?}: {error}");
            assert!(error.to_string().starts_with(&format!("at position {position}: ")));
        }
        let message = Selector::parse("x==a==b").unwrap_err().to_string();
        assert!(message.contains("'=='"), "{message}");
    }

    #[test]
    fn display_and_from_str_round_trip() {
        // TestSelectorParse's "x=a,y=b,z=c" round trip, through FromStr and Display.
        for text in ["x=a,y=b,z=c", "a=b,c in (x,y),!d", "x notin (,a),y==b,z<3"] {
            let selector: Selector = text.parse().unwrap();
            assert_eq!(selector.to_string(), text);
            assert_eq!(selector.to_string().parse::<Selector>(), Ok(selector));
        }
    }

    #[test]
    fn display_sorts_values_of_hand_built_requirements() {
        let requirement = Requirement {
            key: "k".to_owned(),
            operator: Operator::NotIn,
            values: vec!["b".to_owned(), "a".to_owned()],
        };
        assert_eq!(requirement.to_string(), "k notin (a,b)");
    }

    #[test]
    fn hand_built_integer_requirements_never_match_or_panic() {
        let labels = labels(&[("k", "5")]);
        for values in [vec![], vec!["1".to_owned(), "2".to_owned()], vec!["x".to_owned()]] {
            let requirement =
                Requirement { key: "k".to_owned(), operator: Operator::LessThan, values };
            assert!(!requirement.matches(&labels));
        }
    }

    #[test]
    fn deserializes_from_a_string() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error as ValueError, StrDeserializer, StringDeserializer};

        let borrowed: StrDeserializer<'_, ValueError> =
            "app in (web,api), tier!=db".into_deserializer();
        let selector = Selector::deserialize(borrowed).unwrap();
        assert_eq!(selector.to_string(), "app in (api,web),tier!=db");

        let owned: StringDeserializer<ValueError> = String::from("x==a==b").into_deserializer();
        let message = Selector::deserialize(owned).unwrap_err().to_string();
        assert!(
            message.starts_with("invalid label selector \"x==a==b\": at position 4: "),
            "{message}"
        );

        let not_a_string: serde::de::value::U32Deserializer<ValueError> = 7u32.into_deserializer();
        assert!(Selector::deserialize(not_a_string).is_err());
    }

    /// Checks the module invariants on a selector that `input` parsed to.
    fn assert_invariants(input: &str, selector: &Selector) {
        let keys: Vec<&str> = selector.requirements().iter().map(|r| r.key.as_str()).collect();
        assert!(keys.is_sorted(), "{input:?}: requirements sorted by key");
        for requirement in selector.requirements() {
            assert_eq!(validate_label_key(&requirement.key), Ok(()), "{input:?}");
            assert!(requirement.values.is_sorted(), "{input:?}: values sorted");
            let mut deduplicated = requirement.values.clone();
            deduplicated.dedup();
            assert_eq!(deduplicated, requirement.values, "{input:?}: values deduplicated");
            let rebuilt = Requirement::new(
                &requirement.key,
                requirement.operator,
                requirement.values.iter().cloned(),
            );
            assert_eq!(rebuilt.as_ref(), Ok(requirement), "{input:?}: passes NewRequirement");
        }
        let canonical = selector.to_string();
        assert_eq!(
            Selector::parse(&canonical).as_ref(),
            Ok(selector),
            "{input:?} -> {canonical:?}"
        );
    }

    /// Pieces the no-panic test glues together: tokens, keywords, odd whitespace, Unicode,
    /// NUL, boundary lengths and integers.
    fn fragments() -> Vec<String> {
        let mut fragments: Vec<String> = [
            "x",
            "y",
            "k8s.io/app",
            "in",
            "notin",
            "(",
            ")",
            ",",
            "=",
            "==",
            "!=",
            "!",
            ">",
            "<",
            " ",
            "\t",
            "\r",
            "\n",
            "\u{b}",
            "\u{a0}",
            "1",
            "-1",
            "01",
            "A_b.c-D",
            "_",
            ".",
            "/",
            "-",
            "é",
            "日本",
            "🦀",
            "\u{0}",
            "\u{200b}",
            "\u{feff}",
            "||",
            "~",
            "9223372036854775808",
            "e\u{301}",
            "\u{10ffff}",
            "",
        ]
        .iter()
        .map(|fragment| (*fragment).to_owned())
        .collect();
        fragments.extend(["a".repeat(63), "a".repeat(64), "a".repeat(253), "é".repeat(40)]);
        fragments
    }

    fn check_no_panic(input: &str, probes: &[Labels]) {
        match Selector::parse(input) {
            Ok(selector) => {
                assert_invariants(input, &selector);
                for probe in probes {
                    let _ = selector.matches(probe);
                }
            }
            Err(error) => {
                assert!(error.position <= input.len(), "{input:?}: {error}");
                assert!(input.is_char_boundary(error.position), "{input:?}: {error}");
                assert!(!error.message.is_empty());
            }
        }
    }

    #[test]
    fn odd_inputs_never_panic_and_accepted_ones_keep_the_invariants() {
        let probes = [
            Labels::new(),
            labels(&[("x", "1"), ("y", ""), ("in", "notin")]),
            labels(&[("x", "-9223372036854775808"), ("k8s.io/app", "A_b.c-D")]),
        ];
        let fragments = fragments();
        for first in &fragments {
            for second in &fragments {
                check_no_panic(&format!("{first}{second}"), &probes);
                check_no_panic(&format!("x {first} ({second},y)"), &probes);
                check_no_panic(&format!("!{first},x={second}"), &probes);
            }
        }
        // Longer random concatenations from a fixed-seed xorshift generator.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next_random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let length = next_random() % 12;
            let input: String = (0..length)
                .filter_map(|_| {
                    let index = usize::try_from(next_random() % fragments.len() as u64).ok()?;
                    fragments.get(index).map(String::as_str)
                })
                .collect();
            if Selector::parse(&input).is_ok() {
                accepted += 1;
            }
            check_no_panic(&input, &probes);
        }
        assert!(accepted > 100, "the generator must also produce valid selectors ({accepted})");
    }
}
