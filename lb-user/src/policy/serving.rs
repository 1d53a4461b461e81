//! What a policy needs before `lb` serves it, beyond parsing: something to
//! balance. `parse` accepts a policy without listeners (a group alone is a
//! fine unit to check), but serving one would delete every listener, and
//! with them every connection: an empty or truncated file must not do that.
use super::{
    error::{Issue, PolicyError},
    model::Policy,
    parse,
    positions::Positions,
};

/// Refuses a policy `lb` must not serve (run or reload to): one without
/// listeners. `text` is the policy's text, `source_name` its name in errors,
/// `policy` what [`parse::parse`] made of them.
pub fn check_servable(source_name: &str, text: &str, policy: &Policy) -> Result<(), PolicyError> {
    if !policy.listeners.is_empty() {
        return Ok(());
    }
    // Only here, on the way to an error: the text was parsed already.
    let (pos, path, message) = if let Ok(None) = parse::document(text) {
        (
            (1, 1),
            "",
            "the policy is empty: it balances nothing (an empty or truncated file?)",
        )
    } else {
        let pos = Positions::index(text).locate("listeners");
        (
            (pos.line, pos.column),
            "listeners",
            "no listeners: the policy balances nothing (an empty or truncated file?)",
        )
    };
    Err(PolicyError::new(vec![Issue {
        file: source_name.to_string(),
        line: pos.0,
        column: pos.1,
        path: path.to_string(),
        message: message.to_string(),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `check_servable` says of `text`, which must parse.
    fn servable(text: &str) -> Result<(), String> {
        let policy = parse::parse("p.yaml", text).expect("the text parses");
        check_servable("p.yaml", text, &policy).map_err(|e| e.to_string())
    }

    const EMPTY: &str =
        "p.yaml:1:1: the policy is empty: it balances nothing (an empty or truncated file?)";

    #[test]
    fn an_empty_document_is_refused_as_empty() {
        for text in [
            "",
            "\n",
            "# nothing yet\n# at all\n",
            "---\n",
            "~\n",
            "null\n",
        ] {
            assert_eq!(servable(text), Err(EMPTY.to_string()), "{text:?}");
        }
    }

    #[test]
    fn a_policy_without_listeners_is_refused() {
        let groups = "target_groups:\n  - name: web\n    protocol: tcp\n";
        assert_eq!(
            servable(&format!("# the web tier\nlisteners: []\n{groups}")),
            Err(
                "p.yaml:2:12: listeners: no listeners: the policy balances nothing \
                 (an empty or truncated file?)"
                    .to_string()
            )
        );
        // Absent: the document's first key.
        assert_eq!(
            servable(&format!("\n{groups}")),
            Err(
                "p.yaml:2:1: listeners: no listeners: the policy balances nothing \
                 (an empty or truncated file?)"
                    .to_string()
            )
        );
    }

    #[test]
    fn a_policy_with_a_listener_passes() {
        let text = "\
listeners:
  - { name: web, vip: 10.0.3.49, protocol: tcp, port: 80, target_group: web }
target_groups:
  - name: web
    protocol: tcp
    targets: [ { ip: 10.0.3.11 } ]
";
        assert_eq!(servable(text), Ok(()));
    }
}
