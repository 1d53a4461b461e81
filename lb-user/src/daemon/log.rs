//! What the daemon logs when a plan changes: MACs resolved or lost, and
//! which side takes a group's new flows (its own targets, its backup's,
//! last resort), with why.
use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::{
    failover::Serving,
    neighbors,
    plan::{Exclusion, MapPlan, PlannedGroup},
    rename::Renames,
};

pub fn report_exclusions(plan: &MapPlan) {
    for t in &plan.targets {
        if t.excluded == Some(Exclusion::MacUnresolved) {
            warn!(group = %t.group, target = %t.ip, "target MAC unresolved: it takes no traffic until it resolves");
        }
    }
}

/// Logs what changed between two plans: MACs resolved, lost or changed,
/// and groups whose new flows go elsewhere; `renames`: the groups renamed
/// on the way (`lb apply --rename`).
pub fn log_changes(old: &MapPlan, new: &MapPlan, renames: &Renames) {
    macs(old, new);
    for (from, g) in switches(old, new, renames) {
        switched(from, g);
    }
}

/// The groups of `new` whose new flows go elsewhere than in `old`, and
/// where they went before. A group is known by its name (renamed, by its
/// new one), never by its id: a new group may take a removed one's.
fn switches<'a>(
    old: &MapPlan,
    new: &'a MapPlan,
    renames: &Renames,
) -> Vec<(Serving, &'a PlannedGroup)> {
    let before: BTreeMap<&str, Serving> = old
        .groups
        .iter()
        .map(|g| (renames.name(&g.name), g.serving))
        .collect();
    new.groups
        .iter()
        .filter_map(|n| {
            let was = *before.get(n.name.as_str())?;
            (was != n.serving).then_some((was, n))
        })
        .collect()
}

fn macs(old: &MapPlan, new: &MapPlan) {
    let old_targets: BTreeMap<u32, _> = old.targets.iter().map(|t| (t.id, t)).collect();
    for n in &new.targets {
        let Some(o) = old_targets.get(&n.id) else {
            continue;
        };
        if o.info.mac == n.info.mac && o.excluded == n.excluded {
            continue;
        }
        match (o.excluded, n.excluded) {
            (_, Some(Exclusion::MacUnresolved)) => {
                warn!(group = %n.group, target = %n.ip, "target MAC lost: target taken out of selection")
            }
            (Some(Exclusion::MacUnresolved), _) => {
                info!(group = %n.group, target = %n.ip, mac = %neighbors::fmt_mac(&n.info.mac), "target MAC resolved")
            }
            _ if o.info.mac != n.info.mac => {
                info!(group = %n.group, target = %n.ip, mac = %neighbors::fmt_mac(&n.info.mac), "target MAC changed")
            }
            _ => {}
        }
    }
}

/// A group's new flows go to another side: said as a warning when it
/// fails over or falls to last resort, as information when it recovers.
fn switched(from: Serving, g: &PlannedGroup) {
    let backup = g.backup.as_ref().map(|(_, side, ratio)| (*side, *ratio));
    let why = g.serving.reason(g.primary, backup);
    let backup_name = g.backup.as_ref().map_or("", |(name, _, _)| name.as_str());
    let serving = g.serving.as_str();
    match g.serving {
        Serving::Primary => {
            info!(group = %g.name, from = from.as_str(), serving, "new flows go to the group's own targets again: {why}")
        }
        Serving::Backup => {
            warn!(group = %g.name, backup = backup_name, serving, "failed over: new flows go to the backup group: {why}")
        }
        _ => {
            warn!(group = %g.name, from = from.as_str(), serving, "{why}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(groups: &[(u32, &str, Serving)]) -> MapPlan {
        MapPlan {
            ids: Default::default(),
            config: Default::default(),
            listeners: Vec::new(),
            groups: groups
                .iter()
                .map(|(id, name, serving)| PlannedGroup {
                    id: *id,
                    name: name.to_string(),
                    info: Default::default(),
                    table: Default::default(),
                    last_resort: serving.last_resort(),
                    serving: *serving,
                    primary: Default::default(),
                    backup: None,
                })
                .collect(),
            targets: Vec::new(),
        }
    }

    /// A switch is logged for the same group only: renamed by `lb apply
    /// --rename`, or not; never for a new group given a removed one's id.
    #[test]
    fn switches_follow_renames_not_reused_ids() {
        let old = plan(&[(1, "web", Serving::PrimaryLastResort)]);
        let named = |s: Vec<(Serving, &PlannedGroup)>| -> Vec<(Serving, String)> {
            s.into_iter().map(|(f, g)| (f, g.name.clone())).collect()
        };
        let reused = plan(&[(1, "new", Serving::Primary)]);
        assert_eq!(named(switches(&old, &reused, &Renames::default())), []);
        let renamed = plan(&[(1, "www", Serving::Primary)]);
        let renames = Renames::parse(&["web=www"]).unwrap();
        assert_eq!(
            named(switches(&old, &renamed, &renames)),
            [(Serving::PrimaryLastResort, "www".to_string())]
        );
        let same = plan(&[(1, "web", Serving::Primary)]);
        assert_eq!(
            named(switches(&old, &same, &Renames::default())),
            [(Serving::PrimaryLastResort, "web".to_string())]
        );
    }
}
