//! Loading a policy for the daemon: from its file (start, SIGHUP) or from a
//! text `lb apply` sent, checked on its own and then against the host.
use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use tracing::warn;

use super::RunOptions;
use crate::{
    drains::Drains,
    neighbors::InterfaceInfo,
    policy::{self, HostFacts, Issue, Policy},
};

/// A policy read and parsed (checked on its own, not yet against the host).
pub struct Parsed {
    pub name: String,
    pub text: String,
    pub policy: Policy,
    /// What is worth saying about it though it is valid
    /// ([`policy::notices`]).
    pub notices: Vec<Issue>,
}

/// Reads (in bounded time and memory: `policy::limits`) and parses the
/// policy file at `path`.
pub fn parse_file(path: &Path) -> anyhow::Result<Parsed> {
    let name = path.display().to_string();
    let text = policy::read(path)?;
    parse_text(name, text)
}

/// Parses a policy text named `name`; one that balances nothing is refused
/// for serving (an empty or truncated file must not delete every listener).
pub fn parse_text(name: String, text: String) -> anyhow::Result<Parsed> {
    let policy = policy::parse(&name, &text)?;
    policy::check_servable(&name, &text, &policy)?;
    let notices = policy::notices(&name, &text, &policy);
    Ok(Parsed {
        name,
        text,
        policy,
        notices,
    })
}

/// Logs the notices of a policy `lb` takes, at warn level: each is a
/// setting that does nothing.
pub fn warn_notices(notices: &[Issue]) {
    for notice in notices {
        warn!("{notice}");
    }
}

/// The policy checked against the host (targets on the interface's subnets).
pub fn check_for_host(parsed: &Parsed, iface: &InterfaceInfo) -> anyhow::Result<Policy> {
    let mut policy = parsed.policy.clone();
    policy.interface = Some(iface.name.clone());
    policy::validate_for_host(
        &parsed.name,
        &parsed.text,
        &policy,
        &HostFacts {
            iface_nets: iface.nets.clone(),
        },
    )?;
    Ok(policy)
}

/// Which interface: `--iface`, else the policy's `interface:`.
pub fn interface_name(opts: &RunOptions, parsed: &Parsed) -> anyhow::Result<String> {
    if let Some(iface) = &opts.iface {
        return Ok(iface.clone());
    }
    parsed.policy.interface.clone().ok_or_else(|| {
        anyhow!(
            "{}: no interface: give --iface or set `interface:` in the policy",
            parsed.name
        )
    })
}

/// Targets whose MAC comes from the neighbour table (no static `mac:`):
/// the policy's, and those that left it and still drain.
pub fn dynamic_targets(policy: &Policy, drains: &Drains) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = policy
        .target_groups
        .iter()
        .flat_map(|g| g.targets.iter())
        .filter(|t| t.mac.is_none())
        .map(|t| t.ip)
        .chain(
            drains
                .left_the_policy()
                .filter(|d| d.mac.is_none())
                .map(|d| d.ip),
        )
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Makes `text` the policy file at `path` (what a SIGHUP or the next start
/// reads): written whole beside it and renamed over it, so a crash leaves
/// the old file or the new one. Nothing is written when it holds `text`.
pub fn save_policy(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".lb-apply.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write the policy file {}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload reads the file with `parse_file`; an error there is refused
    /// like any other (`Lb::reload`: the last good policy keeps serving).
    #[test]
    fn hostile_files_are_refused_by_parse_file() {
        let dir = std::env::temp_dir().join(format!("lb-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.yaml");
        let name = path.display();
        let deep = format!("listeners: {}x{}\n", "[".repeat(1000), "]".repeat(1000));
        let cases = [
            (
                deep,
                format!(
                    "{name}:1:267: listeners[0]: collections nested deeper than 64 levels: \
                     no policy nests that deep"
                ),
            ),
            (
                "listeners: []\n---\n[[[]]]\n".to_string(),
                format!(
                    "{name}:2:1: a second yaml document starts here: a policy file is one document"
                ),
            ),
        ];
        for (text, expect) in cases {
            std::fs::write(&path, text).unwrap();
            let err = parse_file(&path).err().expect("refused");
            assert_eq!(format!("{err:#}"), expect);
        }
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(policy::limits::MAX_POLICY_BYTES as u64 + 1)
            .unwrap();
        let err = parse_file(&path).err().expect("refused");
        assert_eq!(
            format!("{err:#}"),
            format!("{name}: the policy is larger than the limit of 64 MiB")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_saved_policy_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("lb-save-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.yaml");
        std::fs::write(&path, "old\n").unwrap();
        save_policy(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, 1, "no temporary file left");
        let missing = dir.join("no/such/dir/lb.yaml");
        let err = save_policy(&missing, "x").unwrap_err();
        assert!(format!("{err:#}").contains("cannot write the policy file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
