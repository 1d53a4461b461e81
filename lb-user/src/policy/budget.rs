//! The size budget of a policy document, so that any input, however
//! hostile, is accepted or refused in bounded time and memory: the daemon
//! reads a new policy on SIGHUP while it serves, and must survive a bad one.
//!
//! The limits (`limits.rs`: bytes, depth, nodes) are checked in one pass
//! over yaml-rust2's events (the position index makes that pass, see
//! `positions.rs`) before serde sees the document. Aliases are counted as
//! the nodes they stand for, so a "billion laughs" (aliases of aliases, each
//! multiplying the document) is refused without being expanded.
use std::collections::HashMap;

use yaml_rust2::parser::Event;

use super::limits::{MAX_DEPTH, MAX_NODES, MAX_POLICY_BYTES};

/// A limit the document goes past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Collections nested deeper than [`MAX_DEPTH`]; `alias` when an alias
    /// brings in the depth.
    Depth { alias: bool },
    /// More than [`MAX_NODES`] nodes; `alias` when an alias crosses it.
    Nodes { alias: bool },
    /// More than [`MAX_POLICY_BYTES`] of scalar text; `alias` when an alias
    /// crosses it (the text itself is checked before).
    Text { alias: bool },
    /// An alias inside the collection its anchor names: it would expand
    /// forever.
    Cycle,
}

impl Exceeded {
    /// The message, naming the alias (`*name`) when there is one.
    pub fn message(self, alias: Option<&str>) -> String {
        let alias = alias.unwrap_or("?");
        match self {
            Exceeded::Depth { alias: false } => {
                format!(
                    "collections nested deeper than {MAX_DEPTH} levels: no policy nests that deep"
                )
            }
            Exceeded::Depth { alias: true } => {
                format!("alias `*{alias}` nests collections deeper than {MAX_DEPTH} levels")
            }
            Exceeded::Nodes { alias: false } => format!(
                "more than {MAX_NODES} nodes (keys, values and items): \
                 more than any policy the data plane can hold"
            ),
            Exceeded::Nodes { alias: true } => format!(
                "alias `*{alias}` expands the document past {MAX_NODES} nodes: \
                 aliases may share settings, not multiply the document"
            ),
            Exceeded::Text { alias: false } => {
                format!("more than {} MiB of text", MAX_POLICY_BYTES >> 20)
            }
            Exceeded::Text { alias: true } => format!(
                "alias `*{alias}` expands the document past {} MiB of text: \
                 aliases may share settings, not multiply the document",
                MAX_POLICY_BYTES >> 20
            ),
            Exceeded::Cycle => {
                format!(
                    "alias `*{alias}` is inside the collection it names: it would expand forever"
                )
            }
        }
    }
}

/// What a node costs once expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: u64,
    /// Bytes of scalar text.
    bytes: u64,
    /// Collection levels: 0 for a scalar, 1 + the deepest child's for a
    /// collection.
    height: usize,
}

/// A collection being read.
#[derive(Debug)]
struct Open {
    /// Its anchor id (0: none).
    anchor: usize,
    /// The document's expanded size before it.
    before: Size,
    /// The largest height among its children so far.
    height: usize,
}

/// Counts one document's events against the limits, aliases expanded.
#[derive(Debug, Default)]
pub struct Budget {
    /// The document so far, every alias counted as the node it stands for.
    total: Size,
    open: Vec<Open>,
    /// Anchor id -> the expanded size of the node it names, once complete.
    anchors: HashMap<usize, Size>,
}

impl Budget {
    /// Counts `event`; the first limit it goes past, if any.
    pub fn admit(&mut self, event: &Event) -> Result<(), Exceeded> {
        match event {
            Event::Scalar(text, _, anchor, _) => {
                let size = Size {
                    nodes: 1,
                    bytes: text.len() as u64,
                    height: 0,
                };
                if *anchor != 0 {
                    self.anchors.insert(*anchor, size);
                }
                self.add(size, false)
            }
            Event::Alias(anchor) => {
                let size = *self.anchors.get(anchor).ok_or(Exceeded::Cycle)?;
                if self.open.len() + size.height > MAX_DEPTH {
                    return Err(Exceeded::Depth { alias: true });
                }
                self.add(size, true)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                let before = self.total;
                self.add(
                    Size {
                        nodes: 1,
                        ..Size::default()
                    },
                    false,
                )?;
                self.open.push(Open {
                    anchor: *anchor,
                    before,
                    height: 0,
                });
                if self.open.len() > MAX_DEPTH {
                    return Err(Exceeded::Depth { alias: false });
                }
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(open) = self.open.pop() {
                    let size = Size {
                        nodes: self.total.nodes - open.before.nodes,
                        bytes: self.total.bytes - open.before.bytes,
                        height: open.height + 1,
                    };
                    if open.anchor != 0 {
                        self.anchors.insert(open.anchor, size);
                    }
                    self.grow_parent(size.height);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Adds a node of `size` (a scalar, an alias's expansion, or the count
    /// of a collection's own node) to the document.
    fn add(&mut self, size: Size, alias: bool) -> Result<(), Exceeded> {
        self.total.nodes = self.total.nodes.saturating_add(size.nodes);
        self.total.bytes = self.total.bytes.saturating_add(size.bytes);
        self.grow_parent(size.height);
        if self.total.nodes > MAX_NODES {
            return Err(Exceeded::Nodes { alias });
        }
        if self.total.bytes > MAX_POLICY_BYTES as u64 {
            return Err(Exceeded::Text { alias });
        }
        Ok(())
    }

    fn grow_parent(&mut self, height: usize) {
        if let Some(parent) = self.open.last_mut() {
            parent.height = parent.height.max(height);
        }
    }
}

#[cfg(test)]
mod tests {
    use yaml_rust2::parser::Parser;

    use super::*;

    /// The budget's verdict on the first document of `text`.
    fn admit(text: &str) -> Result<(), Exceeded> {
        let mut budget = Budget::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token().expect("valid yaml") {
                (Event::StreamEnd | Event::DocumentEnd, _) => return Ok(()),
                (event, _) => budget.admit(&event)?,
            }
        }
    }

    /// `levels` levels of `width` aliases to the level below, over a
    /// sequence of `width` scalars.
    fn laughs(levels: usize, width: usize) -> String {
        let mut text = format!("l0: &l0 [{}]\n", vec!["lol"; width].join(", "));
        for level in 1..levels {
            let item = format!("*l{}", level - 1);
            text += &format!("l{level}: &l{level} [{}]\n", vec![item; width].join(", "));
        }
        text
    }

    #[test]
    fn aliases_count_as_what_they_stand_for() {
        // 4 levels of 9: 9^4 = 6561 scalars once expanded, well within.
        assert_eq!(admit(&laughs(4, 9)), Ok(()));
        // 8 levels: 9^8 = 43 million scalars.
        assert_eq!(admit(&laughs(8, 9)), Err(Exceeded::Nodes { alias: true }));
        // Few nodes, long text: 2^17 copies of a 1000-byte scalar.
        let mut text = format!("s0: &s0 {}\n", "x".repeat(1000));
        for level in 1..=17 {
            text += &format!("s{level}: &s{level} [*s{0}, *s{0}]\n", level - 1);
        }
        assert_eq!(admit(&text), Err(Exceeded::Text { alias: true }));
    }

    #[test]
    fn an_alias_inside_its_own_anchor_is_a_cycle() {
        assert_eq!(admit("a: &a [1, *a]\n"), Err(Exceeded::Cycle));
    }

    #[test]
    fn depth_counts_collections_and_aliases() {
        let nested = |depth: usize| format!("{}x{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(admit(&nested(MAX_DEPTH)), Ok(()));
        assert_eq!(
            admit(&nested(MAX_DEPTH + 1)),
            Err(Exceeded::Depth { alias: false })
        );
        // Each half within the limit, together past it.
        let half = MAX_DEPTH / 2 + 1;
        let text = format!(
            "a: &a {}\nb: {}*a{}\n",
            nested(half),
            "[".repeat(half),
            "]".repeat(half)
        );
        assert_eq!(admit(&text), Err(Exceeded::Depth { alias: true }));
    }
}
