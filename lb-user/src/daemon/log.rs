//! What the daemon logs when a plan changes: MACs resolved or lost, and
//! which side takes a group's new flows (its own targets, its backup's,
//! last resort), with why.
use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::{
    failover::Serving,
    neighbors,
    plan::{Exclusion, MapPlan, PlannedGroup},
};

pub fn report_exclusions(plan: &MapPlan) {
    for t in &plan.targets {
        if t.excluded == Some(Exclusion::MacUnresolved) {
            warn!(group = %t.group, target = %t.ip, "target MAC unresolved: it takes no traffic until it resolves");
        }
    }
}

/// Logs what changed between two plans: MACs resolved, lost or changed,
/// and groups whose new flows go elsewhere.
pub fn log_changes(old: &MapPlan, new: &MapPlan) {
    macs(old, new);
    // By id: a renamed group keeps it.
    let old_groups: BTreeMap<u32, &PlannedGroup> = old.groups.iter().map(|g| (g.id, g)).collect();
    for n in &new.groups {
        if let Some(o) = old_groups.get(&n.id)
            && o.serving != n.serving
        {
            switched(o.serving, n);
        }
    }
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
