//! The model's flow table: which flow holds each entry, so that the model
//! predicts where a new flow goes, which flow it evicts and when it goes
//! unremembered. The rules are those of `lb_common::flow_table` (its module
//! docs), written again here from their statement; only the placement
//! (`flow_table::place`: the hash, the two buckets) is the data plane's own.
//!
//! The program stamps an entry's last-seen time with its own clock, which
//! runs in real time between the test's steps (the model's moves only when
//! the test advances it). The harness reads that clock just before and just
//! after each frame, so the model knows each stamp within a [`Span`] (most
//! often exactly: the clock ticks every few milliseconds, a frame takes
//! microseconds). Where two candidates' stamps may be in either order (the
//! clock ticked during a frame), the rules allow either to be the one seen
//! least recently, and where a stamp may be on either side of the
//! protection, an established flow may be evicted or protected: the model
//! then takes what the program did (the entry its flow holds after the
//! frame), as it takes least connections' random draws, and checks that
//! the rules allow it. An empty entry is taken exactly as the rules say.
use std::collections::HashMap;

use lb_common::{
    FlowKey,
    flow_table::{PROTECT_UNITS, TIME_SHIFT, TOUCH_UNITS, WAYS, place},
};

use super::Flow;

/// A stretch of the program's clock (ns, its time offset included): the
/// program read the clock once within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: u64,
    pub to: u64,
}

impl Span {
    pub fn at(ns: u64) -> Span {
        Span { from: ns, to: ns }
    }

    /// Whether `units` (`flow_table::time_units` of a time, as an entry
    /// keeps it: wrapping) may be a time within the span.
    pub fn holds(self, units: u32) -> bool {
        let (lo, hi) = self.units();
        u64::from(units.wrapping_sub(lo as u32)) <= hi - lo
    }

    /// The span in the table's time units (`flow_table::time_units`): the
    /// first and the last.
    pub fn units(self) -> (u64, u64) {
        (self.from >> TIME_SHIFT, self.to >> TIME_SHIFT)
    }

    /// An entry's stamp, `self`, after a packet of its flow at `now`: the
    /// program stamps the entry again when its stamp is more than
    /// `TOUCH_UNITS` old; where the model cannot tell, the stamp is
    /// anywhere from the old one to `now`.
    pub fn after_packet(self, now: Span) -> Span {
        let (lo, hi) = self.units();
        let (now_lo, now_hi) = now.units();
        let touch = TOUCH_UNITS as u64;
        if now_lo.saturating_sub(hi) > touch {
            now
        } else if now_hi.saturating_sub(lo) <= touch {
            self
        } else {
            Span {
                from: self.from,
                to: now.to,
            }
        }
    }
}

/// How much an entry is worth keeping, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Empty,
    /// Its client sent FIN or RST.
    Ended,
    /// Seen once.
    Once,
    /// Seen more than once.
    Established,
}

impl Class {
    pub fn of(flow: &Flow) -> Class {
        if flow.ending {
            Class::Ended
        } else if !flow.again {
            Class::Once
        } else {
            Class::Established
        }
    }
}

/// One of a new flow's eight candidate entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// (bucket, way).
    pub entry: (u32, usize),
    /// The flow that holds it, if one does.
    pub flow: Option<FlowKey>,
    pub class: Class,
    /// When its flow was last seen (an empty entry: never, 0).
    pub stamped: Span,
}

/// How a new flow's entry was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The flow's eight candidates in the order of the rule's last
    /// tie-break: the emptier bucket's four first (the first bucket's if
    /// they hold as many), way by way.
    pub candidates: Vec<Candidate>,
    /// The candidates the rules allow it to take (indices).
    pub allowed: Vec<usize>,
    /// Whether the rules allow it to go unremembered.
    pub unremembered: bool,
    /// The candidate it took (None: unremembered): the program's choice if
    /// the rules allow it, else the model's first.
    pub took: Option<usize>,
    /// When (the program's clock).
    pub now: Span,
}

impl Insert {
    /// The entry it took.
    pub fn entry(&self) -> Option<(u32, usize)> {
        self.took.map(|i| self.candidates[i].entry)
    }

    /// The flow it evicted and that flow's class.
    pub fn evicted(&self) -> Option<(FlowKey, Class)> {
        let c = &self.candidates[self.took?];
        c.flow.map(|k| (k, c.class))
    }

    /// Whether the rules allowed more than one outcome (the program chose).
    pub fn tie(&self) -> bool {
        self.allowed.len() + usize::from(self.unremembered) > 1
    }

    /// The candidates and what the rules allow, for a mismatch.
    pub fn describe(&self) -> String {
        let mut s = format!("at {:?} (time units), its candidates:\n", self.now.units());
        for (i, c) in self.candidates.iter().enumerate() {
            let mark = if self.allowed.contains(&i) {
                "allowed"
            } else {
                "       "
            };
            s += &format!(
                "  {mark} {:?} {:?} stamped {:?} {:?}\n",
                c.entry,
                c.class,
                c.stamped.units(),
                c.flow
            );
        }
        s + &format!("going unremembered allowed: {}", self.unremembered)
    }
}

/// Which flow holds each entry of a table of the data plane's size and
/// seed.
#[derive(Debug, Clone)]
pub struct Table {
    mask: u32,
    seed: u64,
    holders: HashMap<(u32, usize), FlowKey>,
}

impl Table {
    /// An empty table of `buckets` buckets with the data plane's `seed`
    /// (`Dataplane::flow_table_layout`).
    pub fn new(buckets: u32, seed: u64) -> Table {
        Table {
            mask: buckets - 1,
            seed,
            holders: HashMap::new(),
        }
    }

    pub fn put(&mut self, entry: (u32, usize), key: FlowKey) {
        self.holders.insert(entry, key);
    }

    pub fn free(&mut self, entry: (u32, usize)) {
        self.holders.remove(&entry);
    }

    /// The entry a new flow `key` (which holds none) takes at `now`: an
    /// empty one, else the one least worth keeping: the lowest class, then
    /// the one seen least recently, then the first in the candidates'
    /// order; none (the flow goes unremembered) when that is an established
    /// flow seen within `PROTECT_UNITS`. `observed`: the entry the program
    /// gave the flow, taken where the rules allow it (module docs).
    pub fn insert(
        &self,
        key: &FlowKey,
        flows: &HashMap<FlowKey, Flow>,
        now: Span,
        observed: Option<(u32, usize)>,
    ) -> Insert {
        let candidates = self.candidates(key, flows);
        // Those that may be the least worth keeping: no other is surely less.
        let least: Vec<usize> = (0..candidates.len())
            .filter(|&i| !(0..candidates.len()).any(|j| surely_before(&candidates, j, i)))
            .collect();
        let (now_lo, now_hi) = now.units();
        let protect = PROTECT_UNITS as u64;
        let (mut allowed, mut unremembered) = (Vec::new(), false);
        for i in least {
            let c = &candidates[i];
            if c.class != Class::Established {
                allowed.push(i);
                continue;
            }
            // Its age, in time units, is between these.
            let (lo, hi) = c.stamped.units();
            if now_hi.saturating_sub(lo) >= protect {
                allowed.push(i);
            }
            if now_lo.saturating_sub(hi) < protect {
                unremembered = true;
            }
        }
        let program = match observed {
            Some(entry) => allowed
                .iter()
                .find(|&&i| candidates[i].entry == entry)
                .map(|&i| Some(i)),
            None => unremembered.then_some(None),
        };
        // A choice the rules do not allow: the model's first (the harness
        // then reports that the entries differ).
        let took = program.unwrap_or_else(|| allowed.first().copied());
        Insert {
            candidates,
            allowed,
            unremembered,
            took,
            now,
        }
    }

    /// The empty entry a flow `key` (which holds none) takes where it may
    /// evict nobody (a TCP miss): the first empty candidate, or none.
    pub fn first_empty(
        &self,
        key: &FlowKey,
        flows: &HashMap<FlowKey, Flow>,
    ) -> Option<(u32, usize)> {
        self.candidates(key, flows)
            .into_iter()
            .find(|c| c.class == Class::Empty)
            .map(|c| c.entry)
    }

    /// The flow's eight candidates in order: the emptier bucket's first.
    fn candidates(&self, key: &FlowKey, flows: &HashMap<FlowKey, Flow>) -> Vec<Candidate> {
        let p = place(key, self.seed, self.mask);
        let held = |b| {
            (0..WAYS)
                .filter(|&w| self.holders.contains_key(&(b, w)))
                .count()
        };
        let buckets = if held(p.second) < held(p.first) {
            [p.second, p.first]
        } else {
            [p.first, p.second]
        };
        let entries = buckets
            .into_iter()
            .flat_map(|b| (0..WAYS).map(move |w| (b, w)));
        entries
            .map(|entry| match self.holders.get(&entry) {
                Some(k) => {
                    let f = &flows[k];
                    Candidate {
                        entry,
                        flow: Some(*k),
                        class: Class::of(f),
                        stamped: f.stamped,
                    }
                }
                None => Candidate {
                    entry,
                    flow: None,
                    class: Class::Empty,
                    stamped: Span::at(0),
                },
            })
            .collect()
    }
}

/// Whether candidate `j` is surely less worth keeping than candidate `i`:
/// a lower class; or the same class and surely seen earlier, or seen no
/// later and first in the order. (Empty entries are all stamped 0: the
/// first in the order is taken.)
fn surely_before(candidates: &[Candidate], j: usize, i: usize) -> bool {
    let (a, b) = (&candidates[j], &candidates[i]);
    let (a_hi, b_lo) = (a.stamped.units().1, b.stamped.units().0);
    j != i && (a.class < b.class || a.class == b.class && (a_hi < b_lo || a_hi <= b_lo && j < i))
}

#[cfg(test)]
mod tests {
    use lb_common::flow_table::TIME_UNIT_NS;

    use super::*;
    use crate::model::TargetKey;

    const UNIT: u64 = TIME_UNIT_NS;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src_be: [i, 0, 0, 0],
            dst_be: [0x3103_000a, 0, 0, 0],
            src_port_be: 4000,
            dst_port_be: 80,
            proto: 6,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        }
    }

    /// A flow of `class` stamped within `units` (time units).
    fn flow(class: Class, units: (u64, u64), entry: (u32, usize)) -> Flow {
        Flow {
            target: TargetKey::new("web", [10, 0, 3, 11].into()),
            ending: class == Class::Ended,
            counted: class != Class::Ended,
            seen: 0,
            again: class == Class::Established,
            entry,
            stamped: Span {
                from: units.0 * UNIT,
                to: units.1 * UNIT + UNIT - 1,
            },
        }
    }

    /// What an entry holds: a flow's class and stamp (time units), or
    /// nothing.
    type Held = Option<(Class, (u64, u64))>;

    /// A table whose new flow (key 0) finds `held` (class, stamp) in its
    /// candidates, in the candidates' order (its first bucket's ways,
    /// then its second's; None: empty); what the rules allow it at `now`
    /// (time units): the allowed candidates' indices, and going
    /// unremembered.
    fn allowed(held: [Held; 8], now: (u64, u64)) -> (Vec<usize>, bool) {
        let mut table = Table::new(64, 7);
        let p = place(&key(0), table.seed, table.mask);
        let mut flows = HashMap::new();
        for (i, h) in held.iter().enumerate() {
            let entry = (if i < WAYS { p.first } else { p.second }, i % WAYS);
            if let Some((class, units)) = *h {
                table.put(entry, key(1 + i as u32));
                flows.insert(key(1 + i as u32), flow(class, units, entry));
            }
        }
        let now = Span {
            from: now.0 * UNIT,
            to: now.1 * UNIT,
        };
        let insert = table.insert(&key(0), &flows, now, None);
        // Back to the candidates' indices in the table's order.
        let index = |c: &Candidate| {
            let bucket = usize::from(c.entry.0 == p.second) * WAYS;
            bucket + c.entry.1
        };
        let allowed = insert
            .allowed
            .iter()
            .map(|&i| index(&insert.candidates[i]))
            .collect();
        (allowed, insert.unremembered)
    }

    #[test]
    fn new_flows_take_the_entries_the_rules_allow() {
        use Class::*;
        let p = PROTECT_UNITS as u64;
        let now = (20_000, 20_000);
        let e = |u: u64| Some((Established, (u, u)));
        let once = |u: u64| Some((Once, (u, u)));
        // (what, the candidates, now, the allowed ones, unremembered allowed)
        type Case = (&'static str, [Held; 8], (u64, u64), Vec<usize>, bool);
        let cases: [Case; 9] = [
            (
                "an empty entry, of the emptier bucket first",
                [e(1), e(1), None, e(1), e(1), None, None, e(1)],
                now,
                vec![5],
                false,
            ),
            (
                "the first bucket's first on equal fullness",
                [e(1), None, e(1), e(1), None, e(1), e(1), e(1)],
                now,
                vec![1],
                false,
            ),
            (
                "a flow the client ended before one seen once, whatever their age",
                [
                    once(1),
                    once(2),
                    e(3),
                    e(4),
                    Some((Ended, (999, 999))),
                    e(5),
                    e(6),
                    once(7),
                ],
                now,
                vec![4],
                false,
            ),
            (
                "the flow seen once least recently",
                [
                    once(500),
                    e(1),
                    once(400),
                    e(2),
                    once(450),
                    e(3),
                    e(4),
                    e(5),
                ],
                now,
                vec![2],
                false,
            ),
            (
                "seen once, stamps that may be in either order: either",
                [
                    Some((Once, (400, 402))),
                    e(1),
                    Some((Once, (401, 401))),
                    Some((Once, (402, 405))),
                    e(2),
                    e(3),
                    e(4),
                    e(5),
                ],
                now,
                vec![0, 2],
                false,
            ),
            (
                "equal stamps: the first in the order",
                [
                    e(900),
                    once(300),
                    e(900),
                    once(300),
                    e(900),
                    e(900),
                    e(900),
                    e(900),
                ],
                now,
                vec![1],
                false,
            ),
            (
                "established flows within the protection: unremembered",
                [
                    e(19_990),
                    e(19_991),
                    e(19_992),
                    e(19_993),
                    e(19_994),
                    e(19_995),
                    e(19_996),
                    e(19_999),
                ],
                now,
                vec![],
                true,
            ),
            (
                "the established flow least recently seen, past the protection",
                [
                    e(19_990),
                    e(19_991),
                    e(20_000 - p),
                    e(19_993),
                    e(19_994),
                    e(19_995),
                    e(19_996),
                    e(19_999),
                ],
                now,
                vec![2],
                false,
            ),
            (
                "an established flow maybe past the protection: it, or unremembered",
                [
                    e(19_990),
                    e(19_991),
                    Some((Established, (20_000 - p, 20_001 - p))),
                    e(19_993),
                    e(19_994),
                    e(19_995),
                    e(19_996),
                    e(19_999),
                ],
                now,
                vec![2],
                true,
            ),
        ];
        for (what, held, now, want, unremembered) in cases {
            assert_eq!(allowed(held, now), (want, unremembered), "{what}");
        }
    }

    /// Where the rules allow several outcomes, the program's is taken; one
    /// they do not allow is not (the model's first is, and the harness
    /// reports that the entries differ).
    #[test]
    fn the_program_settles_what_the_rules_leave_open() {
        let mut table = Table::new(64, 7);
        let p = place(&key(0), table.seed, table.mask);
        let mut flows = HashMap::new();
        // Two flows seen once whose stamps may be in either order, then
        // established ones within the protection.
        for (i, (b, w)) in [p.first, p.second]
            .into_iter()
            .flat_map(|b| (0..WAYS).map(move |w| (b, w)))
            .enumerate()
        {
            let (class, units) = match i {
                0 => (Class::Once, (400, 402)),
                1 => (Class::Once, (401, 401)),
                _ => (Class::Established, (500, 500)),
            };
            table.put((b, w), key(1 + i as u32));
            let f = flow(class, units, (b, w));
            flows.insert(key(1 + i as u32), f);
        }
        let now = Span::at(600 * UNIT);
        let insert = |observed| table.insert(&key(0), &flows, now, Some(observed));
        let (first, second) = ((p.first, 0), (p.first, 1));
        for taken in [first, second] {
            let i = insert(taken);
            assert!(i.tie());
            assert_eq!(i.entry(), Some(taken));
            assert_eq!(i.evicted().map(|e| e.1), Some(Class::Once));
        }
        let i = insert((p.second, 3));
        assert_eq!(i.entry(), Some(first), "not allowed: the model's first");
    }

    #[test]
    fn a_stamp_older_than_the_touch_interval_is_renewed() {
        let t = TOUCH_UNITS as u64;
        let span = |a: u64, b: u64| Span {
            from: a * UNIT,
            to: b * UNIT,
        };
        let old = span(100, 100);
        assert_eq!(old.after_packet(span(100 + t, 100 + t)), old, "not older");
        let now = span(101 + t, 101 + t);
        assert_eq!(old.after_packet(now), now);
        assert_eq!(
            old.after_packet(span(100 + t, 101 + t)),
            span(100, 101 + t),
            "maybe: anywhere from the old to now"
        );
        assert!(span(100, 101 + t).holds(100) && span(100, 101 + t).holds(101 + t as u32));
        assert!(!span(100, 101).holds(99) && !span(100, 101).holds(102));
    }
}
