//! Where each value of a YAML text is: an index from paths such as
//! `target_groups[0].targets[2].weight` to line and column, built from
//! yaml-rust2's marked events. The serde model carries no positions, so the
//! validator names a path and this index turns it into a line.
use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// A 1-based position in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn of(mark: Marker) -> Self {
        // yaml-rust2 lines are 1-based, columns 0-based.
        Pos {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    pos: Pos,
    /// The text of a scalar value (None for collections and aliases).
    scalar: Option<String>,
}

/// A key that appears twice in one mapping (YAML forbids it; serde_norway
/// reports it without a position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the second occurrence, like `listeners[0].port`.
    pub path: String,
    pub key: String,
    /// Position of the second occurrence's key.
    pub pos: Pos,
    /// Line of the first occurrence's key.
    pub first_line: usize,
}

/// Path -> position of the value at that path (the item itself for sequence
/// entries, the value, not the key, for mapping entries).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    nodes: HashMap<String, Node>,
    duplicate_keys: Vec<DuplicateKey>,
}

impl Positions {
    /// Indexes the first document of `text`. A text the YAML scanner rejects
    /// gives the part indexed before the error: syntax errors are
    /// serde_norway's to report, with its own position.
    pub fn index(text: &str) -> Self {
        let mut builder = Builder::default();
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        Positions {
            nodes: builder.nodes,
            duplicate_keys: builder.duplicate_keys,
        }
    }

    /// Position of `path`, or of its nearest indexed ancestor when the value
    /// is absent (a missing field points at the item that lacks it); 1:1 when
    /// nothing is indexed.
    pub fn locate(&self, path: &str) -> Pos {
        let mut path = path;
        loop {
            if let Some(node) = self.nodes.get(path) {
                return node.pos;
            }
            if path.is_empty() {
                return Pos { line: 1, column: 1 };
            }
            path = parent(path);
        }
    }

    /// The scalar text at exactly `path`, if that value is a scalar.
    pub fn scalar(&self, path: &str) -> Option<&str> {
        self.nodes.get(path)?.scalar.as_deref()
    }

    /// Keys repeated within one mapping, in file order.
    pub fn duplicate_keys(&self) -> &[DuplicateKey] {
        &self.duplicate_keys
    }
}

/// `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``.
fn parent(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return &path[..i];
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

#[derive(Debug)]
enum Frame {
    Map {
        path: String,
        /// `None` while waiting for a key, else the key whose value is next.
        key: Option<String>,
        /// Keys seen so far -> line.
        seen: HashMap<String, usize>,
        /// Where the mapping starts, until its first key is seen (see
        /// `Builder::place`).
        start: Option<Marker>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A collection used as a mapping key (legal YAML, never a valid policy):
    /// nothing inside is indexed.
    Key,
}

#[derive(Debug, Default)]
struct Builder {
    nodes: HashMap<String, Node>,
    duplicate_keys: Vec<DuplicateKey>,
    stack: Vec<Frame>,
    done: bool,
}

impl Builder {
    /// Decides what the node starting at `mark` is: a key (returns None) or
    /// a value at the returned path.
    fn place(&mut self, key_text: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Key) => None,
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map {
                path,
                key,
                seen,
                start,
            }) => match key.take() {
                None => {
                    // This node is a key; a non-scalar key indexes as `?`.
                    let k = key_text.unwrap_or("?").to_string();
                    // A block mapping's start event is marked after its
                    // first key; a flow mapping's at its `{`. The earlier
                    // of the two is where the mapping starts.
                    if let Some(start) = start.take() {
                        let at = if start.index() < mark.index() {
                            start
                        } else {
                            mark
                        };
                        self.nodes.insert(
                            path.clone(),
                            Node {
                                pos: Pos::of(at),
                                scalar: None,
                            },
                        );
                    }
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if let Some(&first_line) = seen.get(&k) {
                        self.duplicate_keys.push(DuplicateKey {
                            path: child,
                            key: k.clone(),
                            pos: Pos::of(mark),
                            first_line,
                        });
                    } else {
                        seen.insert(k.clone(), mark.line());
                    }
                    *key = Some(k);
                    None
                }
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
            },
        }
    }

    fn record(&mut self, path: &str, mark: Marker, scalar: Option<String>) {
        // The first occurrence wins (a duplicate key is reported anyway).
        self.nodes.entry(path.to_string()).or_insert(Node {
            pos: Pos::of(mark),
            scalar,
        });
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(path) = self.place(Some(&text), mark) {
                    self.record(&path, mark, Some(text));
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.place(None, mark) {
                    self.record(&path, mark, None);
                }
            }
            Event::SequenceStart(..) => {
                let frame = match self.place(None, mark) {
                    Some(path) => {
                        self.record(&path, mark, None);
                        Frame::Seq { path, next: 0 }
                    }
                    None => Frame::Key,
                };
                self.stack.push(frame);
            }
            Event::MappingStart(..) => {
                let frame = match self.place(None, mark) {
                    Some(path) => Frame::Map {
                        path,
                        key: None,
                        seen: HashMap::new(),
                        start: Some(mark),
                    },
                    None => Frame::Key,
                };
                self.stack.push(frame);
            }
            Event::MappingEnd => {
                // An empty mapping: only its start event says where it is.
                if let Some(Frame::Map {
                    path,
                    start: Some(start),
                    ..
                }) = self.stack.pop()
                {
                    self.record(&path, start, None);
                }
            }
            Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
interface: eth0
listeners:
  - name: web
    port: 80
target_groups:
  - name: web
    targets:
      - ip: 10.0.3.11
      - { ip: 10.0.3.12, weight: 300 }
";

    #[test]
    fn values_items_and_absent_fields() {
        let p = Positions::index(TEXT);
        let at = |path| {
            let pos = p.locate(path);
            (pos.line, pos.column)
        };
        assert_eq!(at("interface"), (1, 12));
        assert_eq!(at("listeners[0]"), (3, 5));
        assert_eq!(at("listeners[0].port"), (4, 11));
        assert_eq!(at("target_groups[0].targets[0].ip"), (8, 13));
        assert_eq!(at("target_groups[0].targets[1]"), (9, 9));
        assert_eq!(at("target_groups[0].targets[1].weight"), (9, 34));
        // Absent: the item that lacks it.
        assert_eq!(at("listeners[0].vip"), (3, 5));
        assert_eq!(
            p.scalar("target_groups[0].targets[1].ip"),
            Some("10.0.3.12")
        );
    }

    #[test]
    fn duplicate_keys() {
        let p = Positions::index("listeners:\n  - name: a\n    port: 1\n    port: 2\n");
        assert_eq!(
            p.duplicate_keys(),
            [DuplicateKey {
                path: "listeners[0].port".into(),
                key: "port".into(),
                pos: Pos { line: 4, column: 5 },
                first_line: 3,
            }]
        );
    }

    #[test]
    fn broken_yaml_indexes_what_it_can() {
        let p = Positions::index("listeners:\n  - name: web\n   bad: [\n");
        assert_eq!(p.locate("listeners[0].name").line, 2);
        assert_eq!(p.locate("nothing.here"), Pos { line: 1, column: 1 });
    }
}
