//! Renaming target groups (`lb apply FILE --rename OLD=NEW`; SPEC.md
//! "Operations users expect": rename a target group).
//!
//! A group is known by its name ([`crate::ids`]): its id, the ids of its
//! targets, their health verdicts, their drains, which targets flows name,
//! and through the ids the data plane's round-robin position, sticky
//! sessions and active-flow counts. Renamed in the file alone, a group is
//! removed and another one added: the removed group's targets leave at once
//! (their flows choose a target again, which breaks a TCP connection that
//! lands elsewhere), and the new group starts from nothing. A rename says
//! that the group of the file named NEW is the running group OLD: every
//! record of OLD is taken under NEW before the new policy is compared and
//! compiled, so the data plane changes only the group's name record
//! (`GROUP_NAMES`), and the plan shows the rename and whatever else changed.
//!
//! Pure: the daemon applies a checked [`Renames`] to what it holds.
use std::collections::{BTreeMap, BTreeSet};

use crate::{ids::TargetKey, policy::Policy};

/// Renames of target groups, old name to new, checked against one running
/// policy and one new one ([`Renames::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renames(BTreeMap<String, String>);

/// Why a rename cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenameError {
    #[error("--rename {0:?}: not OLD=NEW (two target group names)")]
    Form(String),
    #[error("--rename {old}={new}: `{old}` is renamed twice")]
    OldTwice { old: String, new: String },
    #[error("--rename {old}={new}: two groups would be named `{new}`")]
    NewTwice { old: String, new: String },
    #[error("--rename {old}={new}: the same name")]
    Same { old: String, new: String },
    #[error("--rename {old}={new}: no target group `{old}` in the running policy")]
    NoOld { old: String, new: String },
    #[error("--rename {old}={new}: `{new}` is not a target group of {file}")]
    NoNew {
        old: String,
        new: String,
        file: String,
    },
    #[error(
        "--rename {old}={new}: {file} still has a target group `{old}` (a renamed group leaves the policy under its old name)"
    )]
    OldStays {
        old: String,
        new: String,
        file: String,
    },
    #[error(
        "--rename {old}={new}: `{new}` is a target group of the running policy already (rename it too, or choose another name)"
    )]
    NewTaken { old: String, new: String },
    #[error(
        "--rename {old}={new}: `{new}` is still held by targets of a group of that name removed earlier, until their flows end (choose another name, or rename later)"
    )]
    NewHeld { old: String, new: String },
}

impl Renames {
    /// The renames of `OLD=NEW` arguments (unchecked against policies).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Renames, RenameError> {
        let mut out = BTreeMap::new();
        let mut news = BTreeSet::new();
        for arg in args {
            let arg = arg.as_ref();
            let (old, new) = arg
                .split_once('=')
                .filter(|(o, n)| {
                    let word = |s: &str| !s.is_empty() && !s.contains(['=', ' ', '\t']);
                    word(o) && word(n)
                })
                .ok_or_else(|| RenameError::Form(arg.to_string()))?;
            let (old, new) = (old.to_string(), new.to_string());
            if old == new {
                return Err(RenameError::Same { old, new });
            }
            if out.contains_key(&old) {
                return Err(RenameError::OldTwice { old, new });
            }
            if !news.insert(new.clone()) {
                return Err(RenameError::NewTwice { old, new });
            }
            out.insert(old, new);
        }
        Ok(Renames(out))
    }

    /// The renames as `OLD=NEW` arguments (what `lb apply` sends).
    pub fn args(&self) -> Vec<String> {
        self.0.iter().map(|(o, n)| format!("{o}={n}")).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each rename, old name and new, in the order of the old names.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(o, n)| (o.as_str(), n.as_str()))
    }

    /// Whether the renames can be taken from `running` to `new` (the
    /// policy `source` holds), where `held` are the group names that have
    /// an id now (in the running policy, or kept by targets removed with
    /// their group while flows may name them). Renames are taken all at
    /// once, so two groups may swap names.
    pub fn check(
        &self,
        running: &Policy,
        held: &BTreeSet<String>,
        new: &Policy,
        source: &str,
    ) -> Result<(), RenameError> {
        let has = |p: &Policy, name: &str| p.target_groups.iter().any(|g| g.name == name);
        let olds: BTreeSet<&str> = self.0.keys().map(String::as_str).collect();
        let news: BTreeSet<&str> = self.0.values().map(String::as_str).collect();
        for (old, new_name) in self.pairs() {
            let (o, n) = (old.to_string(), new_name.to_string());
            let file = source.to_string();
            if !has(running, old) {
                return Err(RenameError::NoOld { old: o, new: n });
            }
            if !has(new, new_name) {
                return Err(RenameError::NoNew {
                    old: o,
                    new: n,
                    file,
                });
            }
            if has(new, old) && !news.contains(old) {
                return Err(RenameError::OldStays {
                    old: o,
                    new: n,
                    file,
                });
            }
            if !olds.contains(new_name) {
                if has(running, new_name) {
                    return Err(RenameError::NewTaken { old: o, new: n });
                }
                if held.contains(new_name) {
                    return Err(RenameError::NewHeld { old: o, new: n });
                }
            }
        }
        Ok(())
    }

    /// `name` as it is called after the renames.
    pub fn name<'a>(&'a self, name: &'a str) -> &'a str {
        self.0.get(name).map_or(name, String::as_str)
    }

    /// `key` after the renames (its group, and the backup it is taken
    /// through).
    pub fn key(&self, key: &TargetKey) -> TargetKey {
        TargetKey {
            group: self.name(&key.group).to_string(),
            ip: key.ip,
            via: key.via.as_deref().map(|v| self.name(v).to_string()),
        }
    }

    /// A map by target, its keys renamed.
    pub fn keys<V: Clone>(&self, map: &BTreeMap<TargetKey, V>) -> BTreeMap<TargetKey, V> {
        map.iter().map(|(k, v)| (self.key(k), v.clone())).collect()
    }

    /// `policy` with its groups renamed: their names, the listeners' and
    /// the groups' references to them (`target_group`, `backup`).
    pub fn policy(&self, policy: &Policy) -> Policy {
        let mut out = policy.clone();
        for l in &mut out.listeners {
            l.target_group = self.name(&l.target_group).to_string();
        }
        for g in &mut out.target_groups {
            g.name = self.name(&g.name).to_string();
            if let Some(b) = &mut g.backup {
                *b = self.name(b).to_string();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn policy_of(groups: &[&str], backup: Option<(&str, &str)>) -> Policy {
        let mut y = String::from("listeners:\n");
        for (i, g) in groups.iter().enumerate() {
            y += &format!(
                "  - {{ name: l{i}, vip: 10.0.4.{}, protocol: tcp, port: 80, target_group: {g} }}\n",
                1 + i
            );
        }
        y += "target_groups:\n";
        for (i, g) in groups.iter().enumerate() {
            y += &format!(
                "  - {{ name: {g}, protocol: tcp, targets: [{{ ip: 10.0.3.{} }}]",
                11 + i
            );
            if let Some((of, b)) = backup
                && of == *g
            {
                y += &format!(", backup: {b}, failover_ratio: 0.5");
            }
            y += " }\n";
        }
        policy::parse("p.yaml", &y).unwrap()
    }

    fn held(p: &Policy) -> BTreeSet<String> {
        p.target_groups.iter().map(|g| g.name.clone()).collect()
    }

    #[test]
    fn arguments_are_old_equals_new_each_name_once() {
        let r = Renames::parse(&["web=www", "api=api2"]).unwrap();
        assert_eq!(r.args(), ["api=api2", "web=www"]);
        assert_eq!(r.name("web"), "www");
        assert_eq!(r.name("other"), "other");
        for (bad, says) in [
            ("web", "not OLD=NEW"),
            ("=www", "not OLD=NEW"),
            ("web=", "not OLD=NEW"),
            ("web=w=x", "not OLD=NEW"),
            ("web=web", "the same name"),
        ] {
            let err = Renames::parse(&[bad]).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = Renames::parse(&["web=a", "web=b"]).unwrap_err();
        assert!(matches!(err, RenameError::OldTwice { .. }), "{err}");
        let err = Renames::parse(&["web=a", "api=a"]).unwrap_err();
        assert!(matches!(err, RenameError::NewTwice { .. }), "{err}");
    }

    #[test]
    fn a_rename_names_a_running_group_and_a_new_one() {
        let running = policy_of(&["web", "api"], None);
        let check = |args: &[&str], new: &Policy| {
            Renames::parse(args)
                .unwrap()
                .check(&running, &held(&running), new, "new.yaml")
        };
        let renamed = policy_of(&["www", "api"], None);
        assert_eq!(check(&["web=www"], &renamed), Ok(()));
        let err = |args: &[&str], new: &Policy| check(args, new).unwrap_err().to_string();
        assert_eq!(
            err(&["nope=www"], &renamed),
            "--rename nope=www: no target group `nope` in the running policy"
        );
        assert_eq!(
            err(&["web=w2"], &renamed),
            "--rename web=w2: `w2` is not a target group of new.yaml"
        );
        let both = policy_of(&["web", "www", "api"], None);
        assert!(
            err(&["web=www"], &both).contains("new.yaml still has a target group `web`"),
            "{}",
            err(&["web=www"], &both)
        );
        assert!(err(&["web=api"], &renamed).contains("`api` is a target group of the running"));
        // Swapped names: both renamed at once.
        let swapped = policy_of(&["api", "web"], None);
        assert_eq!(check(&["web=api", "api=web"], &swapped), Ok(()));
        // A name still held by targets of a group removed earlier.
        let mut held_too = held(&running);
        held_too.insert("www".into());
        let err = Renames::parse(&["web=www"])
            .unwrap()
            .check(&running, &held_too, &renamed, "new.yaml")
            .unwrap_err();
        assert!(matches!(err, RenameError::NewHeld { .. }), "{err}");
    }

    #[test]
    fn a_renamed_policy_follows_its_references() {
        let running = policy_of(&["web", "spare"], Some(("web", "spare")));
        let r = Renames::parse(&["web=www", "spare=standby"]).unwrap();
        let p = r.policy(&running);
        assert_eq!(p, policy_of(&["www", "standby"], Some(("www", "standby"))));
        let key = TargetKey::via_backup("web", "spare", "10.0.3.12".parse().unwrap());
        assert_eq!(
            r.key(&key),
            TargetKey::via_backup("www", "standby", "10.0.3.12".parse().unwrap())
        );
        let own = TargetKey::new("other", "10.0.3.12".parse().unwrap());
        assert_eq!(r.key(&own), own);
    }
}
