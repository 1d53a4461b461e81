//! What is wrong with a policy, said the way compilers say it:
//! `FILE:LINE:COL: PATH: MESSAGE`, one issue per line, all issues at once.
use std::fmt;

/// One thing said about a place in a policy: wrong with it (in a
/// [`PolicyError`]), or, from `validate::notices`, worth knowing about a
/// valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The policy's name as given to `parse` (usually its path).
    pub file: String,
    /// 1-based; 0 when there is no position (the file could not be read).
    pub line: usize,
    /// 1-based; 0 when there is no position.
    pub column: usize,
    /// Where in the policy, like `target_groups[0].targets[2].weight`;
    /// empty for the whole document.
    pub path: String,
    /// Lowercase, naming the offending value and what is allowed.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line != 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)
    }
}

/// A policy that cannot be used: one or more issues, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub issues: Vec<Issue>,
}

/// Longest message or path of an issue, in characters. Messages quote the
/// values they are about, and a value can be as long as the file (64 MiB):
/// the middle of a longer one is cut, keeping the start (the value) and
/// the end (what is allowed). No message of a real mistake comes close.
const MAX_SHOWN: usize = 1000;

/// `text`, its middle cut to keep it within `MAX_SHOWN` characters.
fn shown(text: String) -> String {
    let chars = text.chars().count();
    if chars <= MAX_SHOWN {
        return text;
    }
    let keep = (MAX_SHOWN - 40) / 2;
    let cut = chars - 2 * keep;
    let head: String = text.chars().take(keep).collect();
    let tail: String = text.chars().skip(chars - keep).collect();
    format!("{head}...({cut} characters cut)...{tail}")
}

impl PolicyError {
    /// Sorts the issues into file order (stable: same position keeps the
    /// order of discovery), long messages and paths cut.
    pub fn new(mut issues: Vec<Issue>) -> Self {
        issues.sort_by_key(|i| (i.line, i.column));
        for issue in &mut issues {
            issue.message = shown(std::mem::take(&mut issue.message));
            issue.path = shown(std::mem::take(&mut issue.path));
        }
        PolicyError { issues }
    }

    /// `Ok(())` when there is nothing to report.
    pub fn check(issues: Vec<Issue>) -> Result<(), Self> {
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Self::new(issues))
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, issue) in self.issues.iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(line: usize, path: &str, message: &str) -> Issue {
        Issue {
            file: "p.yaml".into(),
            line,
            column: 3,
            path: path.into(),
            message: message.into(),
        }
    }

    #[test]
    fn display_one_issue_per_line_in_file_order() {
        let err = PolicyError::new(vec![
            issue(9, "listeners[1].port", "port 0 is out of range 1-65535"),
            issue(2, "", "yaml syntax error"),
        ]);
        assert_eq!(
            err.to_string(),
            "p.yaml:2:3: yaml syntax error\n\
             p.yaml:9:3: listeners[1].port: port 0 is out of range 1-65535"
        );
    }

    #[test]
    fn a_long_value_is_cut_in_the_middle() {
        let long = format!("interface name `{}` is invalid", "x".repeat(100_000));
        let err = PolicyError::new(vec![issue(1, "interface", &long)]);
        let message = &err.issues[0].message;
        assert!(message.chars().count() <= MAX_SHOWN, "{message}");
        assert!(message.starts_with("interface name `xxx"), "{message}");
        assert!(
            message.contains("xxx...(99068 characters cut)...xxx"),
            "{message}"
        );
        assert!(message.ends_with("xxx` is invalid"), "{message}");
        let short = issue(1, "interface", "interface name `eth0/1` is invalid");
        assert_eq!(PolicyError::new(vec![short.clone()]).issues, [short]);
    }

    #[test]
    fn display_without_position() {
        assert_eq!(
            issue(0, "", "cannot read: no such file").to_string(),
            "p.yaml: cannot read: no such file"
        );
    }
}
