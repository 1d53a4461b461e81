//! The runtime state `lb` keeps on disk beside its pinned data plane: what a
//! restart must not forget and the policy does not say: the targets' health
//! verdicts, so that a restarted `lb` sends no new flow to a target that
//! was unhealthy, and the targets draining (`crate::drains`), so that their
//! delays run on.
//!
//! One JSON file per data plane (`/var/lib/lb/IFACE/state.json`,
//! `dataplane::pin`), written whole to a temporary file, flushed and renamed
//! over the old one: a crash leaves the old state or the new one. It names
//! the data plane it belongs to (`Config::instance`), so the state of
//! another data plane (one detached since) is never restored.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::{drains::Drain, health::HealthState, ids::TargetKey, rename::Renames};

/// The state file's name in its data plane's state directory.
pub const FILE: &str = "state.json";

/// Largest state file read (a verdict is about 60 bytes: 131,071 targets
/// take 8 MB).
const MAX_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: not a state file of lb: {reason}")]
    Format { path: String, reason: String },
}

/// What is saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// The data plane it belongs to: `Config::instance`, in hexadecimal.
    pub instance: String,
    /// The XDP mode its link was made in (`native`, `generic`).
    #[serde(default)]
    pub xdp_mode: Option<String>,
    /// Verdicts of checked targets (targets without one are `initial`).
    #[serde(default)]
    pub health: Vec<Verdict>,
    /// Targets draining, or drained by `lb drain`.
    #[serde(default)]
    pub drains: Vec<Drain>,
    /// The routing table the VIPs are announced in (`lb run --announce`),
    /// for `lb detach` to empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<u32>,
    /// `lb withdraw`: no VIP is announced until `lb announce`.
    #[serde(default)]
    pub withdrawn: bool,
    /// Announce tables of runs before this one that could not be emptied
    /// yet (this run announces in another or none): each start tries
    /// again, and `lb detach` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_announce: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub group: String,
    pub ip: IpAddr,
    /// `healthy` or `unhealthy`.
    pub state: String,
    /// The check that gave it (`TargetCheck::describe`): at a start it is
    /// restored only under the same check, as a reload keeps it. Absent in
    /// files of an `lb` before it: restored under any check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl RuntimeState {
    pub fn new(instance: u64) -> RuntimeState {
        RuntimeState {
            instance: format!("{instance:016x}"),
            ..RuntimeState::default()
        }
    }

    /// The state saved in `dir` for data plane `instance`: None if there is
    /// none, or it is another data plane's.
    pub fn load(dir: &Path, instance: u64) -> Result<Option<RuntimeState>, StateError> {
        let path = dir.join(FILE);
        let shown = path.display().to_string();
        let io_err = |source| StateError::Io {
            path: shown.clone(),
            source,
        };
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let mut text = String::new();
        io::Read::read_to_string(&mut io::Read::take(file, MAX_BYTES), &mut text)
            .map_err(io_err)?;
        let state: RuntimeState = serde_json::from_str(&text).map_err(|e| StateError::Format {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Ok((state.instance == RuntimeState::new(instance).instance).then_some(state))
    }

    /// What stays of it for data plane `instance`, a new one where this
    /// state's was (a reboot: `lb detach` removes the state): the operator's
    /// `lb withdraw` and drains by command, the announce table (for the
    /// next run to empty if it announces elsewhere), and the health
    /// verdicts (keyed by group and address, each under its check). Not the
    /// XDP mode (a new link) nor the drains of removed targets (the new maps
    /// hold none of their flows). The drains kept are then followed to the
    /// policy, as at every start (`daemon::restored_drains`).
    pub fn carried_over(self, instance: u64) -> RuntimeState {
        RuntimeState {
            health: self.health,
            drains: self.drains.into_iter().filter(|d| d.by_command).collect(),
            announce: self.announce,
            withdrawn: self.withdrawn,
            stale_announce: self.stale_announce,
            ..RuntimeState::new(instance)
        }
    }

    /// The state saved in `dir`, whichever data plane it belongs to (`lb
    /// detach` removes what it names).
    pub fn load_any(dir: &Path) -> Option<RuntimeState> {
        let text = fs::read_to_string(dir.join(FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Saves it in `dir` (created if needed), atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io_err = |p: &Path| {
            let path = p.display().to_string();
            move |source| StateError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Format {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The rename itself survives a crash once the directory is synced.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }

    /// The verdicts, by target, of the targets whose check `describe`
    /// (the check's description under the policy now, None for a target
    /// not checked) is the one that gave them: a target whose check changed
    /// while `lb` was stopped starts from `initial`, as after a reload.
    pub fn verdicts(
        &self,
        describe: impl Fn(&TargetKey) -> Option<String>,
    ) -> BTreeMap<TargetKey, HealthState> {
        self.health
            .iter()
            .filter_map(|v| {
                let state =
                    HealthState::from_name(&v.state).filter(|s| *s != HealthState::Initial)?;
                let key = TargetKey::new(v.group.clone(), v.ip);
                let now = describe(&key)?;
                v.check.as_ref().is_none_or(|c| *c == now).then_some(())?;
                Some((key, state))
            })
            .collect()
    }

    /// The verdicts saved, their groups renamed (`crate::rename`; the
    /// drains are saved from the daemon's, renamed already).
    pub fn rename(&mut self, renames: &Renames) {
        for v in &mut self.health {
            v.group = renames.name(&v.group).to_string();
        }
    }

    /// Replaces the verdicts (`initial` ones are not kept), each with the
    /// description of the check that gave it (`describe`).
    pub fn set_verdicts<'a>(
        &mut self,
        verdicts: impl IntoIterator<Item = (&'a TargetKey, HealthState)>,
        describe: impl Fn(&TargetKey) -> Option<String>,
    ) {
        self.health = verdicts
            .into_iter()
            .filter(|(_, s)| *s != HealthState::Initial)
            .map(|(key, state)| Verdict {
                group: key.group.clone(),
                ip: key.ip,
                state: state.as_str().to_string(),
                check: describe(key),
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new data plane where one was (a reboot) keeps what the operator
    /// asked for and the verdicts, not what the old maps held.
    #[test]
    fn a_new_data_plane_keeps_the_operators_requests() {
        let drain = |ip: [u8; 4], by_command| Drain {
            group: "web".into(),
            ip: ip.into(),
            via: None,
            since: 1000,
            until: 1300,
            by_command,
            mac: None,
        };
        let mut old = RuntimeState::new(7);
        old.xdp_mode = Some("native".into());
        old.drains = vec![drain([10, 0, 3, 11], true), drain([10, 0, 3, 12], false)];
        old.announce = Some(4242);
        old.withdrawn = true;
        old.stale_announce = vec![4100];
        let key = TargetKey::new("web", [10, 0, 3, 13].into());
        old.set_verdicts([(&key, HealthState::Unhealthy)], |_| Some("tcp".into()));
        let kept = old.clone().carried_over(8);
        assert_eq!(kept.instance, RuntimeState::new(8).instance);
        assert_eq!(kept.xdp_mode, None);
        assert_eq!(kept.drains, vec![drain([10, 0, 3, 11], true)]);
        assert_eq!((kept.announce, kept.withdrawn), (Some(4242), true));
        assert_eq!(kept.stale_announce, vec![4100], "still to empty");
        assert_eq!(kept.health, old.health);
    }

    #[test]
    fn state_round_trips_and_belongs_to_one_data_plane() {
        let dir = std::env::temp_dir().join(format!("lb-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(RuntimeState::load(&dir, 7).unwrap(), None, "none yet");
        let key = |ip: [u8; 4]| TargetKey::new("web", ip.into());
        let mut state = RuntimeState::new(7);
        state.xdp_mode = Some("native".into());
        state.drains.push(Drain {
            group: "web".into(),
            ip: [10, 0, 3, 14].into(),
            via: None,
            since: 1000,
            until: 1300,
            by_command: true,
            mac: None,
        });
        let (a, b, c) = (
            key([10, 0, 3, 11]),
            key([10, 0, 3, 12]),
            key([10, 0, 3, 13]),
        );
        let tcp = |_: &TargetKey| Some("tcp port 80".to_string());
        state.set_verdicts(
            [
                (&a, HealthState::Healthy),
                (&b, HealthState::Unhealthy),
                (&c, HealthState::Initial),
            ],
            tcp,
        );
        state.save(&dir).unwrap();
        let back = RuntimeState::load(&dir, 7).unwrap().expect("saved");
        assert_eq!(back, state);
        assert_eq!(
            back.verdicts(tcp),
            BTreeMap::from([
                (a.clone(), HealthState::Healthy),
                (b.clone(), HealthState::Unhealthy)
            ])
        );
        // Under another check (or none), a verdict is not restored: b's
        // check moved to port 8080 while lb was stopped.
        let moved = |k: &TargetKey| {
            let port = if *k == b { 8080 } else { 80 };
            (*k != c).then(|| format!("tcp port {port}"))
        };
        assert_eq!(
            back.verdicts(moved),
            BTreeMap::from([(a.clone(), HealthState::Healthy)])
        );
        assert_eq!(back.verdicts(|_| None), BTreeMap::new(), "unchecked now");
        // A file of an lb before checks were saved: restored under any.
        let mut old = back.clone();
        old.health.iter_mut().for_each(|v| v.check = None);
        assert_eq!(old.verdicts(moved).len(), 2);
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("\"check\""), "{json}");
        assert_eq!(
            RuntimeState::load(&dir, 8).unwrap(),
            None,
            "another data plane's"
        );
        fs::write(dir.join(FILE), "{ not json").unwrap();
        assert!(matches!(
            RuntimeState::load(&dir, 7),
            Err(StateError::Format { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
