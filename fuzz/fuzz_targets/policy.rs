//! The policy reader, end to end, on any text: what `lb run`, a SIGHUP
//! reload, `lb apply` and `lb check` do with a policy file short of the
//! kernel (parse, the servable check, the host check, compile).
//!
//! Invariants: nothing panics; each input is done with in bounded time and
//! memory (libFuzzer's `-timeout` and `-rss_limit_mb` catch the rest); a
//! refused policy is a clean `PolicyError` (at least one issue, each naming
//! the file, with a message and a position inside the text); a policy that
//! passes every check compiles (validation guarantees what the compiler
//! does not check again).
#![no_main]

use std::net::IpAddr;

use lb_user::{
    plan::Observed,
    policy::{self, HostFacts, PolicyError, compile::compile},
};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    // `policy::read` refuses a file that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = policy::parse(NAME, text).and_then(|policy| {
        policy::check_servable(NAME, text, &policy)?;
        Ok(policy)
    });
    let mut policy = match parsed {
        Ok(policy) => policy,
        Err(err) => return check_error(text, &err),
    };
    // As `daemon::load::check_for_host` does, on an interface with one
    // subnet of each family.
    let nets: Vec<(IpAddr, u8)> = vec![
        ("10.0.0.0".parse().unwrap(), 8),
        ("fd00::".parse().unwrap(), 8),
    ];
    policy.interface = Some("eth0".to_string());
    let host = HostFacts {
        iface_nets: nets.clone(),
    };
    if let Err(err) = policy::validate_for_host(NAME, text, &policy, &host) {
        return check_error(text, &err);
    }
    let observed = Observed {
        iface_nets: nets,
        ..Observed::default()
    };
    if let Err(err) = compile(&policy, &observed) {
        panic!("a valid policy does not compile: {err}");
    }
});

/// A refusal the way a user reads it: issues naming the file, each with a
/// message, at a line of the text (0: no position) or at its end.
fn check_error(text: &str, err: &PolicyError) {
    assert!(!err.issues.is_empty(), "an error without issues");
    // YAML breaks lines at LF, CRLF and a lone CR; the end of a text whose
    // last line has no break is at the start of the next (as yaml-rust2 and
    // libyaml place it).
    let lines = text.matches(['\n', '\r']).count() - text.matches("\r\n").count() + 2;
    for issue in &err.issues {
        assert_eq!(issue.file, NAME, "{issue}");
        assert!(!issue.message.is_empty(), "{issue}");
        assert!(issue.line <= lines, "line past the text: {issue}");
    }
    // Rendered as the daemon logs it.
    assert!(!err.to_string().is_empty());
}
