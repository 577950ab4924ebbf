//! Where things are in a YAML file: a map from key paths (`rules[2].ports[0]`,
//! `groups.ratings.pods.selector`) to 1-based line numbers, so that errors found after
//! deserialising (an unknown group, a bad port) can still name the line.
//! Must not depend on: anything of labelwall's.
//!
//! Built from yaml-rust2's marked event stream; anchors and aliases are treated as values.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path -> line.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    duplicates: Vec<DuplicateKey>,
}

/// A key given twice in one mapping. serde rejects that for fixed fields, but keeps the last
/// value silently for maps (group names, labels), so the loaders report these themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the second occurrence.
    pub path: String,
    pub key: String,
    pub line: usize,
    pub first_line: usize,
}

impl LineIndex {
    /// Indexes `text`; a document the YAML parser rejects gives an empty index (the
    /// deserialiser reports that error with its own location).
    pub fn build(text: &str) -> LineIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        LineIndex { lines: builder.lines, duplicates: builder.duplicates }
    }

    /// Keys given more than once in the same mapping.
    pub fn duplicates(&self) -> &[DuplicateKey] {
        &self.duplicates
    }

    /// The line of `path`, or of its closest enclosing node that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    duplicates: Vec<DuplicateKey>,
}

impl Builder {
    fn child_path(&self) -> String {
        match self.stack.last() {
            Some(Frame::Mapping { path, key: Some(key) }) if path.is_empty() => key.clone(),
            Some(Frame::Mapping { path, key: Some(key) }) => format!("{path}.{key}"),
            Some(Frame::Mapping { path, key: None }) => path.clone(),
            Some(Frame::Sequence { path, index }) => format!("{path}[{index}]"),
            None => String::new(),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key, .. }) => *key = None,
            Some(Frame::Sequence { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn record(&mut self, path: String, mark: Marker) {
        self.lines.entry(path).or_insert(mark.line());
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Mapping { key: key @ None, .. }) = self.stack.last_mut() {
                    *key = Some(text.clone());
                    let path = self.child_path();
                    if let Some(&first_line) = self.lines.get(&path) {
                        self.duplicates.push(DuplicateKey {
                            path,
                            key: text,
                            line: mark.line(),
                            first_line,
                        });
                    } else {
                        self.record(path, mark);
                    }
                } else {
                    let path = self.child_path();
                    self.record(path, mark);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                let path = self.child_path();
                self.record(path, mark);
                self.value_done();
            }
            Event::MappingStart(..) => {
                let path = self.child_path();
                self.record(path.clone(), mark);
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.child_path();
                self.record(path.clone(), mark);
                self.stack.push(Frame::Sequence { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
default_action: deny
groups:
  ratings:
    pods: {namespace: bookinfo, selector: \"app=ratings\"}
  db:
    cidrs:
      - 10.20.0.0/24
      - fd00::/64
rules:
  - name: first
    from: [ratings]
    to: [db]
  - name: second
    from:
      - any
    ports: [tcp/80, udp/53]
";

    #[test]
    fn keys_and_items_map_to_their_lines() {
        let index = LineIndex::build(POLICY);
        assert_eq!(index.line("default_action"), Some(1));
        assert_eq!(index.line("groups.ratings"), Some(3));
        assert_eq!(index.line("groups.ratings.pods.selector"), Some(4));
        assert_eq!(index.line("groups.db.cidrs[1]"), Some(8));
        assert_eq!(index.line("rules[0]"), Some(10));
        assert_eq!(index.line("rules[0].to"), Some(12));
        assert_eq!(index.line("rules[1].name"), Some(13));
        assert_eq!(index.line("rules[1].from[0]"), Some(15));
        assert_eq!(index.line("rules[1].ports[1]"), Some(16));
    }

    #[test]
    fn missing_paths_fall_back_to_the_enclosing_node() {
        let index = LineIndex::build(POLICY);
        assert_eq!(index.line("rules[1].action"), Some(13));
        assert_eq!(index.line("nothing.here"), None);
    }

    #[test]
    fn keys_given_twice_in_one_mapping_are_found() {
        let index =
            LineIndex::build("groups:\n  web: {}\n  db: {}\n  web: {}\nlabels: {a: 1, a: 2}\n");
        let found: Vec<_> =
            index.duplicates().iter().map(|d| (d.path.as_str(), d.line, d.first_line)).collect();
        assert_eq!(found, [("groups.web", 4, 2), ("labels.a", 5, 5)]);
        assert!(LineIndex::build("a: {x: 1}\nb: {x: 1}\n").duplicates().is_empty());
    }

    #[test]
    fn broken_yaml_gives_an_empty_index_without_panicking() {
        let index = LineIndex::build("a: [unclosed\n  b: }");
        assert_eq!(index.line("zzz"), None);
    }
}
