//! Which targets take a group's new flows: its own healthy ones, its backup
//! group's, or all of one side in last resort (SPEC.md "Backup group and
//! failover ratio", the table of which [`serving`] is). Pure.
//!
//! "Healthy" here is "could take new flows": healthy (or `initial`, or
//! unchecked), weight above 0, MAC known, not draining. A group's share is
//! its healthy targets over all its registered ones (draining ones are not
//! registered). Last resort gives new flows back to the unhealthy ones
//! only: a target of weight 0 or whose MAC is unknown never takes one, so
//! a side in last resort with none but those drops its new flows.

use serde::{Deserialize, Serialize};

/// How many targets one side has, how many of them are healthy, and how
/// many would take new flows in last resort (weight above 0, MAC known,
/// healthy or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Side {
    pub total: usize,
    pub healthy: usize,
    pub usable: usize,
}

impl Side {
    /// The healthy share (0 for an empty side).
    pub fn share(self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.healthy as f64 / self.total as f64
        }
    }
}

/// Who takes a group's new flows (named as `lb status` shows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Serving {
    /// Its own healthy targets.
    #[default]
    Primary,
    /// Its own healthy targets, though their share is below the failover
    /// ratio: the backup has no healthy target.
    PrimaryBelowRatio,
    /// The backup group's healthy targets.
    Backup,
    /// Every own target with a MAC and a weight above 0, healthy or not:
    /// none of either side is healthy (none may have both: then new flows
    /// are dropped).
    PrimaryLastResort,
    /// Every backup target with a MAC and a weight above 0: the group has
    /// no target and none of the backup's is healthy.
    BackupLastResort,
    /// Nobody: both sides are empty (new flows are dropped).
    Nobody,
}

impl Serving {
    pub const ALL: [Serving; 6] = [
        Serving::Primary,
        Serving::PrimaryBelowRatio,
        Serving::Backup,
        Serving::PrimaryLastResort,
        Serving::BackupLastResort,
        Serving::Nobody,
    ];

    /// Its name in `lb status` and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Serving::Primary => "primary",
            Serving::PrimaryBelowRatio => "primary_below_ratio",
            Serving::Backup => "backup",
            Serving::PrimaryLastResort => "primary_last_resort",
            Serving::BackupLastResort => "backup_last_resort",
            Serving::Nobody => "nobody",
        }
    }

    /// Whether the backup's targets take the new flows.
    pub fn backup(self) -> bool {
        matches!(self, Serving::Backup | Serving::BackupLastResort)
    }

    /// Whether every target of the serving side takes new flows, healthy
    /// or not.
    pub fn last_resort(self) -> bool {
        matches!(self, Serving::PrimaryLastResort | Serving::BackupLastResort)
    }

    /// Why, for `lb status` and the log.
    pub fn reason(self, primary: Side, backup: Option<(Side, f64)>) -> String {
        let share = |s: Side| format!("{} of {} targets healthy", s.healthy, s.total);
        let ratio = backup.map_or(String::new(), |(_, r)| format!(", failover ratio {r}"));
        match self {
            Serving::Primary => format!("{}{ratio}", share(primary)),
            Serving::PrimaryBelowRatio => {
                format!("{}{ratio}, but no healthy backup target", share(primary))
            }
            Serving::Backup => format!(
                "{}{ratio}; backup: {}",
                share(primary),
                share(backup.map(|(b, _)| b).unwrap_or_default())
            ),
            Serving::PrimaryLastResort => {
                let sides = if backup.is_some() {
                    " on either side"
                } else {
                    ""
                };
                format!(
                    "no healthy target{sides}: {}",
                    takers(primary, "the group's")
                )
            }
            Serving::BackupLastResort => format!(
                "no target here and no healthy one in the backup: {}",
                takers(backup.map(|(b, _)| b).unwrap_or_default(), "the backup's")
            ),
            Serving::Nobody => "no target here nor in the backup".into(),
        }
    }
}

/// Who takes new flows in last resort: `whose` targets of `side` with a
/// weight above 0 and a known MAC, or nobody.
fn takers(side: Side, whose: &str) -> String {
    if side.usable == 0 {
        format!(
            "last resort, but none of {whose} {} targets has a weight above 0 and a known MAC: new flows are dropped",
            side.total
        )
    } else {
        format!(
            "last resort, {whose} {} of {} targets with a weight above 0 and a known MAC take new flows, unhealthy or not",
            side.usable, side.total
        )
    }
}

/// Who takes new flows, for a group with `primary` targets and, if it has a
/// backup, the backup's targets and the failover ratio. Without a backup:
/// the group itself, or last resort.
pub fn serving(primary: Side, backup: Option<(Side, f64)>) -> Serving {
    let Some((backup, ratio)) = backup else {
        return alone(primary);
    };
    let enough = if ratio == 0.0 {
        primary.healthy > 0
    } else {
        primary.total > 0 && primary.share() >= ratio
    };
    if enough {
        Serving::Primary
    } else if backup.healthy > 0 {
        Serving::Backup
    } else if primary.healthy > 0 {
        Serving::PrimaryBelowRatio
    } else if primary.total > 0 {
        Serving::PrimaryLastResort
    } else if backup.total > 0 {
        Serving::BackupLastResort
    } else {
        Serving::Nobody
    }
}

/// A group without a backup: its healthy targets, else all of them.
fn alone(primary: Side) -> Serving {
    if primary.healthy > 0 {
        Serving::Primary
    } else if primary.total > 0 {
        Serving::PrimaryLastResort
    } else {
        Serving::Nobody
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(healthy: usize, total: usize) -> Side {
        Side {
            total,
            healthy,
            usable: total,
        }
    }

    /// Every row of SPEC.md's failover table.
    #[test]
    fn the_failover_table() {
        use Serving::*;
        let cases = [
            // ratio != 0 and healthy share of primary >= ratio: primary
            (
                "share at the ratio",
                side(2, 4),
                Some((side(3, 3), 0.5)),
                Primary,
            ),
            ("share above", side(4, 4), Some((side(0, 3), 0.5)), Primary),
            // ratio = 0 and at least one healthy primary target: primary
            (
                "ratio 0, one healthy",
                side(1, 4),
                Some((side(3, 3), 0.0)),
                Primary,
            ),
            // ratio != 0, healthy share < ratio, one healthy backup: backup
            ("share below", side(1, 4), Some((side(1, 3), 0.5)), Backup),
            ("share 0", side(0, 4), Some((side(1, 3), 0.5)), Backup),
            // ratio = 0, no healthy primary, one healthy backup: backup
            (
                "ratio 0, none healthy",
                side(0, 4),
                Some((side(2, 3), 0.0)),
                Backup,
            ),
            // share < ratio but no healthy backup: the healthy primaries
            (
                "no healthy backup",
                side(1, 4),
                Some((side(0, 3), 0.5)),
                PrimaryBelowRatio,
            ),
            (
                "empty backup",
                side(1, 4),
                Some((side(0, 0), 0.5)),
                PrimaryBelowRatio,
            ),
            // primary not empty, every primary and backup unhealthy: all primary
            (
                "all unhealthy",
                side(0, 4),
                Some((side(0, 3), 0.5)),
                PrimaryLastResort,
            ),
            (
                "all unhealthy, ratio 0",
                side(0, 4),
                Some((side(0, 3), 0.0)),
                PrimaryLastResort,
            ),
            // primary empty, every backup unhealthy: all backup
            (
                "empty, backup unhealthy",
                side(0, 0),
                Some((side(0, 3), 0.5)),
                BackupLastResort,
            ),
            // primary empty, a healthy backup: backup
            (
                "empty, backup healthy",
                side(0, 0),
                Some((side(2, 3), 0.5)),
                Backup,
            ),
            (
                "empty, backup healthy, 0",
                side(0, 0),
                Some((side(2, 3), 0.0)),
                Backup,
            ),
            // primary and backup both empty: dropped
            ("both empty", side(0, 0), Some((side(0, 0), 0.5)), Nobody),
            // ratio 1.0: every target must be healthy
            (
                "ratio 1, one down",
                side(3, 4),
                Some((side(1, 3), 1.0)),
                Backup,
            ),
            (
                "ratio 1, all up",
                side(4, 4),
                Some((side(1, 3), 1.0)),
                Primary,
            ),
            // No backup: healthy ones, else last resort, else nobody.
            ("alone", side(1, 4), None, Primary),
            ("alone, none healthy", side(0, 4), None, PrimaryLastResort),
            ("alone, empty", side(0, 0), None, Nobody),
        ];
        for (name, primary, backup, want) in cases {
            assert_eq!(serving(primary, backup), want, "{name}");
        }
    }

    #[test]
    fn reasons_name_the_counts() {
        let (p, b) = (side(1, 4), side(2, 3));
        assert_eq!(
            Serving::Backup.reason(p, Some((b, 0.5))),
            "1 of 4 targets healthy, failover ratio 0.5; backup: 2 of 3 targets healthy"
        );
        assert_eq!(Serving::Primary.reason(p, None), "1 of 4 targets healthy");
    }

    /// Last resort names who takes new flows: the unhealthy targets with a
    /// weight and a MAC, or nobody when every target has weight 0 (or no
    /// MAC).
    #[test]
    fn last_resort_says_who_takes_new_flows_or_that_they_are_dropped() {
        let weightless = Side {
            total: 3,
            healthy: 0,
            usable: 0,
        };
        let two = Side {
            usable: 2,
            ..weightless
        };
        assert_eq!(serving(weightless, None), Serving::PrimaryLastResort);
        assert_eq!(
            Serving::PrimaryLastResort.reason(weightless, None),
            "no healthy target: last resort, but none of the group's 3 targets has a weight above 0 \
             and a known MAC: new flows are dropped"
        );
        assert_eq!(
            Serving::PrimaryLastResort.reason(two, Some((weightless, 0.5))),
            "no healthy target on either side: last resort, the group's 2 of 3 targets with a \
             weight above 0 and a known MAC take new flows, unhealthy or not"
        );
        assert_eq!(
            Serving::BackupLastResort.reason(Side::default(), Some((weightless, 0.5))),
            "no target here and no healthy one in the backup: last resort, but none of the \
             backup's 3 targets has a weight above 0 and a known MAC: new flows are dropped"
        );
    }
}
