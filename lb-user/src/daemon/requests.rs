//! What changes a running `lb` on request: a new policy (SIGHUP reads its
//! file, `lb apply` sends a text; both take the same path: checked,
//! compiled, its changes named, then taken whole or not at all), `lb drain`
//! and `lb undrain`; and the status report.
use std::collections::BTreeSet;

use tracing::{error, info, warn};

use super::{Daemon, Phases, Services, load, log, unix_now, warn_flow_table_size};
use crate::{
    api::{self, ApplyReply, DrainReply, Reply, Request, TargetRef},
    dataplane::reader::StatsRead,
    drains::{DrainError, Drains},
    flows,
    ids::{Ids, TargetKey},
    plan::MapPlan,
    policy::{
        self, Policy,
        diff::{self, Change, ForGroup},
    },
    rename::Renames,
    status::{self, DataPlaneStatus},
};

/// A new policy, checked and compiled, not yet taken.
struct Proposal {
    text: String,
    policy: Policy,
    /// Groups renamed on the way (`lb apply --rename`).
    renames: Renames,
    drains: Drains,
    plan: MapPlan,
    changes: Vec<Change>,
    hints: Vec<String>,
    /// `policy::notices`, logged when taken.
    notices: Vec<policy::Issue>,
}

impl Daemon {
    /// Answers one API request.
    pub(super) async fn handle(&mut self, request: Request, s: &mut Services) -> Reply {
        match request {
            Request::Status { group } => self.status(s, group.as_deref()),
            // Answered by the connection's task (`Services::receive`).
            Request::Stats { .. } => Reply::Error("stats is answered elsewhere".into()),
            Request::Apply(apply) => Reply::Apply(self.on_apply(apply, s).await),
            Request::Drain(target) => self.on_drain(target, true),
            Request::Undrain(target) => self.on_drain(target, false),
            Request::Announce(on) => self.on_announce(on),
        }
    }

    /// The status report, or `group`'s: the counters and the statistics of
    /// what is shown read in a few lookups (`Reader::stats_of`).
    fn status(&self, s: &Services, group: Option<&str>) -> Reply {
        if let Some(g) = group
            && !self.policy.target_groups.iter().any(|t| t.name == g)
        {
            return Reply::Error(format!("no target group named {g:?}"));
        }
        let stats = self.stats_of(group);
        let sweep = self
            .sweeper
            .as_ref()
            .and_then(crate::dataplane::sweep::SweeperHandle::last);
        let report = status::report(&status::Sources {
            policy: &self.policy,
            plan: &self.plan,
            dataplane: &self.dataplane,
            max_flows: self.dataplane.flow_table_size(),
            sweep: sweep.as_deref(),
            health: &s.health.borrow(),
            drains: &self.drains,
            written: &self.written,
            now_unix: unix_now(),
            iface: &self.iface.name,
            mode: &self.mode,
            config: &self.opts.config,
            data_plane: DataPlaneStatus {
                pin_dir: self.instance.pin_dir().display().to_string(),
                adopted: self.dataplane.adopted(),
                state_file: self
                    .instance
                    .state_dir()
                    .join(crate::state::FILE)
                    .display()
                    .to_string(),
            },
            errors: self.errors.clone(),
            counters: status::counter_names(self.reader.counters().ok()),
            stats: &stats,
            probe_sources: self.probe_sources.list().to_vec(),
            only_group: group,
            announce: self.announce_status(),
        });
        Reply::Status(Box::new(report))
    }

    /// The statistics of the listeners and targets of `group`, or of all.
    fn stats_of(&self, group: Option<&str>) -> StatsRead {
        let wanted = |g: &str| group.is_none_or(|only| only == g);
        let listeners: Vec<u32> = self
            .policy
            .listeners
            .iter()
            .zip(&self.plan.listeners)
            .filter(|(l, _)| wanted(&l.target_group))
            .map(|(_, p)| p.info.listener_id)
            .collect();
        let targets: Vec<u32> = self
            .plan
            .targets
            .iter()
            .filter(|t| wanted(&t.group))
            .map(|t| t.id)
            .collect();
        self.reader
            .stats_of(&listeners, &targets)
            .unwrap_or_default()
    }

    /// Checks `parsed` against the host and `renames` against it and the
    /// policy in effect, and compiles it with the drains it starts, every
    /// record of a renamed group under its new name: nothing changes yet.
    fn propose(&mut self, parsed: load::Parsed, renames: Renames) -> anyhow::Result<Proposal> {
        let policy = load::check_for_host(&parsed, &self.iface)?;
        let held: BTreeSet<String> = self.plan.ids.groups().map(|(n, _)| n.into()).collect();
        renames.check(&self.policy, &held, &policy, &parsed.name)?;
        let before = renames.policy(&self.policy);
        let mut drains = self.drains.renamed(&renames);
        drains.follow(&before, &policy, unix_now());
        let plan = self.compile_renamed(&policy, &drains, &renames)?;
        let mut changes = diff::changes_renaming(&self.policy, &policy, &renames);
        for change in &mut changes {
            if let Change::TargetRemoved { group, ip, removal } = change {
                // A removed target keeps its id in the new plan (retired).
                let key = TargetKey::new(group.as_str(), *ip);
                removal.active_flows = Some(self.active_flows_in(&plan.ids, &key));
                removal.unused_by = drains.get(&key).map(|d| d.until);
                // Its views in the groups its group backs up drain too,
                // each with that group's delay.
                removal.for_groups = drains
                    .list()
                    .filter(|d| d.via.as_deref() == Some(group.as_str()) && d.ip == *ip)
                    .filter(|d| !d.by_command)
                    .map(|d| ForGroup {
                        group: d.group.clone(),
                        active_flows: self.active_flows_in(&plan.ids, &d.key()),
                        unused_by: d.until,
                    })
                    .collect();
            }
        }
        Ok(Proposal {
            text: parsed.text,
            notices: parsed.notices,
            hints: diff::rename_hints(&before, &policy),
            policy,
            renames,
            drains,
            plan,
            changes,
        })
    }

    /// Flows in progress on `key`'s target now (0 if it has no id).
    fn active_flows(&self, key: &TargetKey) -> u64 {
        self.active_flows_in(&self.plan.ids, key)
    }

    /// Flows in progress on `key`'s target now, its id in `ids`.
    fn active_flows_in(&self, ids: &Ids, key: &TargetKey) -> u64 {
        ids.target(key)
            .map_or(0, |a| flows::shown(self.dataplane.active_flows(a.id)))
    }

    /// Takes every record of a renamed group under its new name: what was
    /// observed of its targets (health verdicts, which flows name), what
    /// is written, and the state saved.
    fn rename(&mut self, renames: &Renames) {
        self.verdicts = renames.keys(&self.verdicts);
        self.written = renames.keys(&self.written);
        self.flows = self.flows.renamed(renames);
        self.closed = self.closed.renamed(renames);
        self.state.rename(renames);
        self.instruments.renamed(renames);
        self.released = self.released.renamed(renames);
        for (from, to) in renames.pairs() {
            info!(from, to, "target group renamed");
        }
    }

    /// Takes a proposal: the policy, its drains and its plan, written.
    async fn take(&mut self, p: Proposal, s: &mut Services) {
        if p.policy.max_flows() != self.policy.max_flows()
            && !self.dataplane.flow_table_fits(p.policy.max_flows())
        {
            warn_flow_table_size(&self.dataplane, &p.policy, &self.iface.name);
        }
        for change in &p.changes {
            info!(%change, "policy change");
        }
        load::warn_notices(&p.notices);
        let dynamic = load::dynamic_targets(&p.policy, &p.drains);
        if let Err(err) = s.watch.set_targets(dynamic).await {
            warn!(%err, "following the new targets' MACs");
        }
        if p.renames.is_empty() {
            s.monitor.update(&p.policy);
        } else {
            self.rename(&p.renames);
            s.monitor.update_renamed(&p.policy, &p.renames);
        }
        self.probe_sources.follow(&p.policy);
        self.errors.policy = None;
        self.policy = p.policy;
        self.drains = p.drains;
        self.save_state();
        log::log_changes(&self.plan, &p.plan, &p.renames);
        self.plan = p.plan;
        self.apply();
        self.schedule_drains();
        log::report_exclusions(&self.plan);
    }

    /// SIGHUP: reads the policy file again and takes it; one that fails to
    /// load, to compile or to balance anything is refused and the last
    /// good one keeps serving.
    pub(super) async fn reload(&mut self, s: &mut Services) {
        // `systemctl reload` waits for READY=1 after RELOADING=1 (the
        // unit's ExecReload sends SIGHUP).
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            super::notify_systemd(&[sd_notify::NotifyState::Reloading, now]);
        }
        self.reload_file(s).await;
        super::notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    async fn reload_file(&mut self, s: &mut Services) {
        let mut timer = Phases::start();
        let proposal = load::parse_file(&self.opts.config).and_then(|parsed| {
            timer.lap("policy");
            self.propose(parsed, Renames::default())
        });
        match proposal {
            Ok(p) => {
                timer.lap("compile");
                let changes = p.changes.len();
                self.take(p, s).await;
                timer.lap("apply");
                if self.in_sync {
                    info!(took = %timer, changes, "policy reloaded");
                }
            }
            Err(err) => self.refused("policy reload", &err),
        }
    }

    /// A new policy refused (`how` it came): logged, and shown in the
    /// status until one is taken.
    fn refused(&mut self, how: &str, err: &anyhow::Error) {
        error!("{how} refused, still serving the last good policy:\n{err:#}");
        self.instruments.policy_refusals.inc();
        self.errors.policy = Some(format!("{err:#}"));
    }

    /// `lb apply`: the plan of the policy sent, and unless a dry run, the
    /// policy taken and made the policy file (a SIGHUP or a restart serves
    /// it too).
    async fn on_apply(&mut self, apply: api::Apply, s: &mut Services) -> ApplyReply {
        let mut reply = ApplyReply {
            source: apply.source.clone(),
            dry_run: apply.dry_run,
            applied: false,
            refused: None,
            apply_error: None,
            changes: Vec::new(),
            hints: Vec::new(),
            notices: Vec::new(),
        };
        let proposal = Renames::parse(&apply.renames)
            .map_err(anyhow::Error::from)
            .and_then(|renames| {
                let parsed = load::parse_text(apply.source, apply.text)?;
                self.propose(parsed, renames)
            });
        let p = match proposal {
            Ok(p) => p,
            Err(err) => {
                if !apply.dry_run {
                    self.refused("lb apply", &err);
                }
                reply.refused = Some(format!("{err:#}"));
                return reply;
            }
        };
        reply.changes = p.changes.clone();
        reply.hints = p.hints.clone();
        reply.notices = p.notices.iter().map(ToString::to_string).collect();
        if apply.dry_run {
            return reply;
        }
        if let Err(err) = load::save_policy(&self.opts.config, &p.text) {
            self.refused("lb apply", &err);
            reply.refused = Some(format!("{err:#}"));
            return reply;
        }
        info!(source = %reply.source, changes = p.changes.len(), "lb apply");
        self.take(p, s).await;
        reply.applied = true;
        reply.apply_error = self.errors.apply.clone();
        reply
    }

    /// `lb announce` (`on`) or `lb withdraw`: kept in the runtime state.
    fn on_announce(&mut self, on: bool) -> Reply {
        if self.announcer.is_none() {
            return Reply::Error("lb runs without --announce: it announces no VIP".to_string());
        }
        if self.state.withdrawn == on {
            let what = if on { "announce" } else { "withdraw" };
            info!("lb {what}");
        }
        self.state.withdrawn = !on;
        self.save_state();
        self.announce();
        match self.announce_status() {
            Some(status) => Reply::Announce(status),
            None => Reply::Error("no announcer".to_string()),
        }
    }

    /// `lb drain` (`drain`) or `lb undrain`.
    fn on_drain(&mut self, target: TargetRef, drain: bool) -> Reply {
        let done = if drain {
            self.drains
                .drain(&self.policy, &target.group, target.ip, unix_now())
        } else if !self
            .policy
            .target_groups
            .iter()
            .any(|g| g.name == target.group)
        {
            Err(DrainError::NoGroup(target.group.clone()))
        } else {
            self.drains.undrain(&target.group, target.ip)
        };
        let d = match done {
            Ok(d) => d,
            Err(err) => return Reply::Error(err.to_string()),
        };
        let active_flows = self.active_flows(&d.key());
        if drain {
            info!(group = %d.group, target = %d.ip, active_flows, delay_s = d.until - d.since, "lb drain: draining");
        } else {
            info!(group = %d.group, target = %d.ip, active_flows, "lb undrain: active again");
        }
        self.save_state();
        self.reconcile();
        self.schedule_drains();
        Reply::Drain(DrainReply {
            group: target.group,
            ip: target.ip,
            draining: drain,
            active_flows,
            until: drain.then_some(d.until),
        })
    }
}
