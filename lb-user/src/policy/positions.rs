//! Where each value of a YAML text is: an index from paths such as
//! `target_groups[0].targets[2].weight` to line and column, built from
//! yaml-rust2's marked events. The serde model carries no positions, so the
//! validator names a path and this index turns it into a line.
//!
//! The same pass over the events checks the document against the limits of
//! `limits.rs`, so that `parse` can refuse it before serde sees it; it reads
//! on to the end of the text, so that serde sees no text the limits did not
//! cover (serde_norway reads a second document whole, only to refuse it),
//! and stops at the start of a second document. The pass
//! is a loop (no recursion, whatever the nesting), and the index is a tree
//! (a node is found from its parent by its key or item number, and stores
//! no path), so both cost time and memory in proportion to the text.
//!
//! An alias is not expanded: its node refers to its anchor's node, and a
//! path that goes through the alias goes on among the anchored node's
//! children. So `health_check: *check` has an `interval_s` where `&check`
//! writes one, positioned there.
use std::{collections::HashMap, fmt::Write as _};

use yaml_rust2::{
    parser::{Event, Parser},
    scanner::Marker,
};

use super::budget::{Budget, Exceeded};

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

/// Most duplicate keys listed, each with its path (the others are counted):
/// a path can be long, and a hostile text can repeat a key a million times.
const MAX_DUPLICATES_LISTED: usize = 100;

/// Longest key written out in a path or message; a longer one is cut, ending
/// in `...` (no policy field comes close).
const MAX_KEY_SHOWN: usize = 64;

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

/// A document past one of the limits of `limits.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    /// Where the node that went past it is.
    pub pos: Pos,
    /// That node's path (empty for the document itself).
    pub path: String,
    pub message: String,
}

/// Where yaml-rust2 stopped on a text it could not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    /// The same place, in characters from the start of the text.
    pub index: usize,
    pub message: String,
}

/// yaml-rust2's error for flow collections (`[`, `{`) nested past 255
/// levels. It can come before the budget sees the 65th level: the scanner
/// reads a flow collection ahead to know whether it is a mapping key.
const FLOW_NESTING_ERROR: &str = "recursion limit exceeded";

/// One indexed value.
#[derive(Debug, Clone, Default)]
struct Node {
    /// 1-based; 0 until the node is placed (a mapping: at its first key or
    /// at its end).
    line: u32,
    column: u32,
    /// The text of a scalar value (None for collections and aliases).
    scalar: Option<Box<str>>,
}

impl Node {
    fn pos(&self) -> Option<Pos> {
        (self.line != 0).then_some(Pos {
            line: self.line as usize,
            column: self.column as usize,
        })
    }
}

/// Path -> position of the value at that path (the item itself for sequence
/// entries, the value, not the key, for mapping entries).
#[derive(Debug, Clone)]
pub struct Positions {
    /// The tree's nodes, the document's root first; the maps below give
    /// each node's children.
    nodes: Vec<Node>,
    /// (mapping, key) -> the key's value.
    keys: HashMap<(u32, Box<str>), u32>,
    /// (sequence, item number) -> the item.
    items: HashMap<(u32, u32), u32>,
    /// Alias -> the node its anchor is on (an alias to an anchor the index
    /// has no node for, such as a key's, has none).
    aliases: HashMap<u32, u32>,
    duplicate_keys: Vec<DuplicateKey>,
    unlisted_duplicate_keys: usize,
    limit_exceeded: Option<LimitExceeded>,
    /// Where a second document starts.
    second_document: Option<Pos>,
    syntax_error: Option<SyntaxError>,
}

/// An empty index: every path is at 1:1.
impl Default for Positions {
    fn default() -> Self {
        Positions {
            nodes: vec![Node::default()],
            keys: HashMap::new(),
            items: HashMap::new(),
            aliases: HashMap::new(),
            duplicate_keys: Vec::new(),
            unlisted_duplicate_keys: 0,
            limit_exceeded: None,
            second_document: None,
            syntax_error: None,
        }
    }
}

impl Positions {
    /// Indexes the first document of `text`, stopping at the first limit it
    /// goes past ([`Positions::limit_exceeded`]), at the start of a second
    /// document ([`Positions::second_document`]) or at a syntax error
    /// ([`Positions::syntax_error`]): the part before is indexed.
    pub fn index(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut budget = Budget::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, mark) = match parser.next_token() {
                Ok((Event::StreamEnd, _)) => break,
                Ok(next) => next,
                Err(e) if e.info() == FLOW_NESTING_ERROR => {
                    builder.index.limit_exceeded = Some(LimitExceeded {
                        pos: Pos::of(*e.marker()),
                        path: builder.next_path(),
                        message: Exceeded::Depth { alias: false }.message(None),
                    });
                    break;
                }
                Err(e) => {
                    builder.index.syntax_error = Some(SyntaxError {
                        pos: Pos::of(*e.marker()),
                        index: e.marker().index(),
                        message: e.info().to_string(),
                    });
                    break;
                }
            };
            let verdict = budget.admit(&event);
            let alias = matches!(event, Event::Alias(_));
            let done = builder.on_event(event, mark);
            if let Err(exceeded) = verdict {
                let name = alias.then(|| alias_name(text, mark));
                builder.index.limit_exceeded = Some(LimitExceeded {
                    pos: Pos::of(mark),
                    path: builder.path(builder.last_depth),
                    message: exceeded.message(name.as_deref()),
                });
                break;
            }
            if done {
                break;
            }
        }
        builder.index
    }

    /// Position of `path`, or of its nearest indexed ancestor when the value
    /// is absent (a missing field points at the item that lacks it); 1:1 when
    /// nothing is indexed.
    pub fn locate(&self, path: &str) -> Pos {
        let mut found = self.nodes[0].pos();
        self.walk(path, |node| found = node.pos().or(found));
        found.unwrap_or(Pos { line: 1, column: 1 })
    }

    /// The scalar text at exactly `path`, if that value is a scalar or an
    /// alias to one.
    pub fn scalar(&self, path: &str) -> Option<&str> {
        let id = self.walk(path, |_| {})?;
        self.nodes[self.anchored(id) as usize].scalar.as_deref()
    }

    /// Keys repeated within one mapping, in file order (the first
    /// `MAX_DUPLICATES_LISTED`).
    pub fn duplicate_keys(&self) -> &[DuplicateKey] {
        &self.duplicate_keys
    }

    /// Repeated keys past those [`Positions::duplicate_keys`] lists.
    pub fn unlisted_duplicate_keys(&self) -> usize {
        self.unlisted_duplicate_keys
    }

    /// The first limit of `limits.rs` the document goes past, if any.
    pub fn limit_exceeded(&self) -> Option<&LimitExceeded> {
        self.limit_exceeded.as_ref()
    }

    /// Where a second document starts, if the text has one (a policy is one
    /// document).
    pub fn second_document(&self) -> Option<Pos> {
        self.second_document
    }

    /// Where yaml-rust2 found the text broken, if it did.
    pub fn syntax_error(&self) -> Option<&SyntaxError> {
        self.syntax_error.as_ref()
    }

    /// Follows `path` (`a.b[2].c`) down from the root, calling `visit` on
    /// each node on the way; the node at `path`, or None when the path
    /// leaves the tree. Through an alias the path goes on among its
    /// anchored node's children. Each step takes one segment of `path`, so
    /// an alias inside its own anchor (`&a [*a]`) cannot make it loop.
    fn walk(&self, path: &str, mut visit: impl FnMut(&Node)) -> Option<u32> {
        let mut id = 0;
        let mut rest = path;
        while !rest.is_empty() {
            let parent = self.anchored(id);
            if let Some(r) = rest.strip_prefix('[') {
                let (number, r) = r.split_once(']')?;
                id = *self.items.get(&(parent, number.parse().ok()?))?;
                rest = r;
            } else {
                let r = rest.strip_prefix('.').unwrap_or(rest);
                let end = r.find(['.', '[']).unwrap_or(r.len());
                id = *self.keys.get(&(parent, r[..end].into()))?;
                rest = &r[end..];
            }
            visit(&self.nodes[id as usize]);
        }
        Some(id)
    }

    /// The node an alias's anchor is on; any other node itself. One hop
    /// is enough: an alias cannot carry an anchor.
    fn anchored(&self, id: u32) -> u32 {
        self.aliases.get(&id).copied().unwrap_or(id)
    }

    /// Places the node at `mark`, unless placed already (the first
    /// occurrence of a repeated key wins: it is reported anyway); true when
    /// placed now.
    fn record(&mut self, id: u32, mark: Marker, scalar: Option<String>) -> bool {
        let node = &mut self.nodes[id as usize];
        if node.line != 0 {
            return false;
        }
        let pos = Pos::of(mark);
        // Saturated: no policy has lines or columns that long.
        node.line = pos.line.try_into().unwrap_or(u32::MAX);
        node.column = pos.column.try_into().unwrap_or(u32::MAX);
        node.scalar = scalar.map(String::into_boxed_str);
        true
    }
}

/// `key`, cut to `MAX_KEY_SHOWN` characters.
fn shown(key: &str) -> String {
    match key.char_indices().nth(MAX_KEY_SHOWN) {
        Some((end, _)) => format!("{}...", &key[..end]),
        None => key.to_string(),
    }
}

/// The name of the alias at `mark` (its text after `*`), cut like a key.
fn alias_name(text: &str, mark: Marker) -> String {
    // yaml-rust2 counts the index in characters.
    let name: String = text
        .chars()
        .skip(mark.index())
        .skip_while(|&c| c == '*')
        .take_while(|c| !c.is_whitespace() && !",[]{}".contains(*c))
        .take(MAX_KEY_SHOWN + 1)
        .collect();
    shown(&name)
}

#[derive(Debug)]
enum Frame {
    Map {
        id: u32,
        /// The last key seen: the key of the value being read, or of the
        /// value next when `value_next`.
        key: String,
        value_next: bool,
        /// Keys seen so far -> line.
        seen: HashMap<String, usize>,
        /// Where the mapping starts, until its first key is seen (see
        /// `Builder::place`).
        start: Option<Marker>,
    },
    Seq {
        id: u32,
        /// Items so far.
        len: u32,
    },
    /// A collection used as a mapping key (legal YAML, never a valid policy):
    /// nothing inside is indexed.
    Key,
}

#[derive(Debug, Default)]
struct Builder {
    index: Positions,
    /// The collections being read, outermost first.
    stack: Vec<Frame>,
    /// The path of the node placed last (for messages) is that of the
    /// first `last_depth` frames (a key stands for its mapping).
    last_depth: usize,
    /// Documents started so far.
    documents: usize,
    /// yaml-rust2's anchor id -> the node the anchor is on.
    anchors: HashMap<usize, u32>,
}

/// A node's place: a mapping's value for a key, or a sequence's item.
enum Child {
    Value(u32, Box<str>),
    Item(u32, u32),
}

impl Positions {
    /// The node at `child`, added if new (a repeated key gives the first
    /// occurrence's node).
    fn child(&mut self, child: Child) -> u32 {
        let next = self.nodes.len() as u32;
        let id = match child {
            Child::Value(map, key) => *self.keys.entry((map, key)).or_insert(next),
            Child::Item(seq, n) => *self.items.entry((seq, n)).or_insert(next),
        };
        if id == next {
            self.nodes.push(Node::default());
        }
        id
    }
}

impl Builder {
    /// Decides what the node starting at `mark` is: a key (returns None) or
    /// the value of the returned node.
    fn place(&mut self, key_text: Option<&str>, mark: Marker) -> Option<u32> {
        let depth = self.stack.len();
        let child = match self.stack.last_mut() {
            None => {
                self.last_depth = 0;
                return Some(0);
            }
            Some(Frame::Key) => return None,
            Some(Frame::Seq { id, len }) => {
                *len += 1;
                Child::Item(*id, *len - 1)
            }
            Some(Frame::Map {
                id,
                key,
                value_next: value_next @ true,
                ..
            }) => {
                *value_next = false;
                Child::Value(*id, key.as_str().into())
            }
            Some(Frame::Map {
                id,
                key,
                value_next,
                seen,
                start,
            }) => {
                // This node is a key; a non-scalar key indexes as `?`.
                let k = key_text.unwrap_or("?");
                // A block mapping's start event is marked after its first
                // key; a flow mapping's at its `{`. The earlier of the two
                // is where the mapping starts.
                let map_start = start.take().map(|start| {
                    let at = if start.index() < mark.index() {
                        start
                    } else {
                        mark
                    };
                    (*id, at)
                });
                let first_line = seen.get(k).copied();
                if first_line.is_none() {
                    seen.insert(k.to_string(), mark.line());
                }
                *key = k.to_string();
                *value_next = true;
                if let Some((id, at)) = map_start {
                    self.index.record(id, at, None);
                }
                if let Some(first_line) = first_line {
                    self.duplicate(depth - 1, k, mark, first_line);
                }
                self.last_depth = depth - 1;
                return None;
            }
        };
        self.last_depth = depth;
        Some(self.index.child(child))
    }

    /// Notes key `key` at `mark`, seen before at `first_line` in the mapping
    /// of the frame at `depth`.
    fn duplicate(&mut self, depth: usize, key: &str, mark: Marker, first_line: usize) {
        if self.index.duplicate_keys.len() == MAX_DUPLICATES_LISTED {
            self.index.unlisted_duplicate_keys += 1;
            return;
        }
        let key = shown(key);
        let map = self.path(depth);
        self.index.duplicate_keys.push(DuplicateKey {
            path: if map.is_empty() {
                key.clone()
            } else {
                format!("{map}.{key}")
            },
            key,
            pos: Pos::of(mark),
            first_line,
        });
    }

    /// The path of the node the first `depth` frames lead to (long keys
    /// cut; a collection used as a key ends it), or all the frames when
    /// fewer are open (`last_depth` outlives the frames that end).
    fn path(&self, depth: usize) -> String {
        let mut path = String::new();
        for frame in self.stack.iter().take(depth) {
            match frame {
                Frame::Map { key, .. } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&shown(key));
                }
                Frame::Seq { len, .. } => {
                    let _ = write!(path, "[{}]", len.saturating_sub(1));
                }
                Frame::Key => break,
            }
        }
        path
    }

    /// The path of the node the parser reads next: in the innermost open
    /// collection, the value of its last key, or its next item.
    fn next_path(&self) -> String {
        let path = self.path(self.stack.len());
        // `path` names a sequence's last item read.
        if let Some(Frame::Seq {
            len: next @ 1.., ..
        }) = self.stack.last()
            && let Some(parent) = path.strip_suffix(&format!("[{}]", next - 1))
        {
            return format!("{parent}[{next}]");
        }
        path
    }

    /// A sequence (`seq`) or a mapping starting at `mark`, with yaml-rust2's
    /// `anchor` id (0: none): its frame on the stack (a key's frame when it
    /// is a mapping's key).
    fn open(&mut self, mark: Marker, seq: bool, anchor: usize) {
        let placed = self.place(None, mark);
        if let Some(id) = placed {
            self.anchor(anchor, id);
        }
        let frame = match placed {
            Some(id) if seq => {
                self.index.record(id, mark, None);
                Frame::Seq { id, len: 0 }
            }
            Some(id) => Frame::Map {
                id,
                key: String::new(),
                value_next: false,
                seen: HashMap::new(),
                start: Some(mark),
            },
            None => Frame::Key,
        };
        self.stack.push(frame);
    }

    /// Notes that yaml-rust2's `anchor` id (0: none) is on node `id`.
    fn anchor(&mut self, anchor: usize, id: u32) {
        if anchor != 0 {
            self.anchors.insert(anchor, id);
        }
    }

    /// Takes one event; true at the start of a second document.
    fn on_event(&mut self, ev: Event, mark: Marker) -> bool {
        match ev {
            Event::Scalar(text, _, anchor, _) => {
                if let Some(id) = self.place(Some(&text), mark) {
                    self.index.record(id, mark, Some(text));
                    self.anchor(anchor, id);
                }
            }
            Event::Alias(anchor) => {
                if let Some(id) = self.place(None, mark)
                    && self.index.record(id, mark, None)
                    && let Some(&anchored) = self.anchors.get(&anchor)
                {
                    self.index.aliases.insert(id, anchored);
                }
            }
            Event::SequenceStart(anchor, _) => self.open(mark, true, anchor),
            Event::MappingStart(anchor, _) => self.open(mark, false, anchor),
            Event::MappingEnd => {
                // An empty mapping: only its start event says where it is.
                if let Some(Frame::Map {
                    id,
                    start: Some(start),
                    ..
                }) = self.stack.pop()
                {
                    self.index.record(id, start, None);
                }
            }
            Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    // The line of its `---`, or of its first node when it
                    // has none (then marked after a block mapping's first
                    // key): a document starts at a line's start.
                    self.index.second_document = Some(Pos {
                        line: mark.line(),
                        column: 1,
                    });
                    return true;
                }
            }
            _ => {}
        }
        false
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
    fn duplicate_keys_listed_are_bounded() {
        let long = "k".repeat(1000);
        let mut text = format!("{long}:\n");
        for _ in 0..=MAX_DUPLICATES_LISTED + 5 {
            text += "  port: 1\n";
        }
        let p = Positions::index(&text);
        assert_eq!(p.duplicate_keys().len(), MAX_DUPLICATES_LISTED);
        assert_eq!(p.unlisted_duplicate_keys(), 5);
        // A long key is cut in paths.
        let shown = format!("{}...", "k".repeat(MAX_KEY_SHOWN));
        assert_eq!(p.duplicate_keys()[0].path, format!("{shown}.port"));
    }

    #[test]
    fn a_limit_stops_the_index_and_names_the_node() {
        let text = format!(
            "listeners:\n  - name: web\n    vip: {}x{}\n",
            "[".repeat(70),
            "]".repeat(70)
        );
        let p = Positions::index(&text);
        let limit = p.limit_exceeded().expect("past the depth limit");
        // Level 65 is the 62nd `[` (3 levels above the first), at column 71.
        assert_eq!(
            limit.pos,
            Pos {
                line: 3,
                column: 71
            }
        );
        assert!(
            limit.path.starts_with("listeners[0].vip[0][0]"),
            "{}",
            limit.path
        );
        assert_eq!(p.locate("listeners[0].name").line, 2);
    }

    #[test]
    fn a_path_goes_through_an_alias_into_its_anchored_mapping() {
        let p = Positions::index(
            "\
a:
  check: &check { interval_s: 5, timeout_s: 5 }
b:
  check: *check
",
        );
        assert_eq!(p.scalar("b.check.interval_s"), Some("5"));
        // Written at the anchor, so positioned there.
        assert_eq!(
            p.locate("b.check.interval_s"),
            Pos {
                line: 2,
                column: 31
            }
        );
        assert_eq!(p.locate("b.check.timeout_s"), p.locate("a.check.timeout_s"));
        // The alias itself, and what the anchor lacks, are at the alias.
        assert_eq!(
            p.locate("b.check"),
            Pos {
                line: 4,
                column: 10
            }
        );
        assert_eq!(
            p.locate("b.check.port"),
            Pos {
                line: 4,
                column: 10
            }
        );
        assert_eq!(p.scalar("b.check.port"), None);
        assert_eq!(p.scalar("b.check"), None);
    }

    #[test]
    fn an_alias_to_a_scalar_has_its_text() {
        let p = Positions::index(
            "\
groups:
  - { name: w, affinity: &aff two_tuple }
  - { name: x, affinity: *aff }
  - { name: y, affinity: *nowhere }
",
        );
        assert_eq!(p.scalar("groups[0].affinity"), Some("two_tuple"));
        assert_eq!(p.scalar("groups[1].affinity"), Some("two_tuple"));
        assert_eq!(
            p.locate("groups[1].affinity"),
            Pos {
                line: 3,
                column: 26
            }
        );
        // yaml-rust2 refuses an unknown anchor: the index stops there.
        assert!(p.syntax_error().is_some());
        assert_eq!(p.scalar("groups[2].affinity"), None);
    }

    #[test]
    fn a_sequence_item_through_an_alias() {
        let p = Positions::index("a: &list [x, y]\nb: *list\n");
        assert_eq!(p.scalar("b[1]"), Some("y"));
        assert_eq!(
            p.locate("b[1]"),
            Pos {
                line: 1,
                column: 14
            }
        );
        assert_eq!(p.scalar("b[2]"), None);
    }

    #[test]
    fn an_alias_inside_its_own_anchor_is_walked_one_segment_a_step() {
        // The budget refuses the alias (it would expand forever) and the
        // index stops after it, but what it holds can still be walked.
        let p = Positions::index("a: &a [z, *a]\n");
        assert!(p.limit_exceeded().is_some());
        assert_eq!(p.scalar("a[0]"), Some("z"));
        assert_eq!(p.scalar("a[1][1][1][0]"), Some("z"));
        assert_eq!(p.scalar("a[1][1][1]"), None);
        assert_eq!(
            p.locate("a[1][1][1]"),
            Pos {
                line: 1,
                column: 11
            }
        );
    }

    #[test]
    fn broken_yaml_indexes_what_it_can() {
        let p = Positions::index("listeners:\n  - name: web\n   bad: [\n");
        assert_eq!(p.locate("listeners[0].name").line, 2);
        assert_eq!(p.locate("nothing.here"), Pos { line: 1, column: 1 });
    }
}
