//! Expected HTTP status codes: `200`, `201,202,401`, `200-399`, or a mix
//! such as `200,301-302` (SPEC.md "Health checks"). Spaces around the commas
//! and the dash are allowed (`201, 202`, as the seed documents write it).
use std::fmt;

use crate::policy::limits::STATUS_CODE;

/// A parsed status-code expression: a list of inclusive ranges, in the order
/// written (a single code is a range of one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusCodes {
    ranges: Vec<(u16, u16)>,
}

impl StatusCodes {
    /// Parses an expression; the error is a lowercase message naming the
    /// offending part (used as is by the policy validator).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err(
                "status_codes is empty: give a code (200), a list (201,202) \
                        or a range (200-399)"
                    .into(),
            );
        }
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!(
                    "status_codes `{text}` has an empty entry: separate codes with single commas"
                ));
            }
            let range = match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (code(lo.trim())?, code(hi.trim())?);
                    if lo > hi {
                        return Err(format!(
                            "status code range {lo}-{hi} is reversed: write {hi}-{lo}"
                        ));
                    }
                    (lo, hi)
                }
                None => {
                    let c = code(item)?;
                    (c, c)
                }
            };
            ranges.push(range);
        }
        Ok(StatusCodes { ranges })
    }

    /// Whether `status` is one of the expected codes.
    pub fn matches(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl Default for StatusCodes {
    /// 200-399 (`policy::limits::DEFAULT_STATUS_CODES`).
    fn default() -> Self {
        StatusCodes {
            ranges: vec![(200, 399)],
        }
    }
}

impl fmt::Display for StatusCodes {
    /// Canonical form: `200,301-302`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, &(lo, hi)) in self.ranges.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

fn code(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "status code `{text}` is not a number: give a code (200), a list (201,202) \
             or a range (200-399)"
        ));
    }
    match text.parse::<u16>() {
        Ok(c) if STATUS_CODE.contains(c) => Ok(c),
        _ => Err(format!("status code {text} is out of range {STATUS_CODE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_matches() {
        let cases: &[(&str, &[u16], &[u16], &str)] = &[
            // text, matching, not matching, canonical form
            ("200", &[200], &[199, 201, 404], "200"),
            (
                "201,202,401",
                &[201, 202, 401],
                &[200, 203, 400, 402],
                "201,202,401",
            ),
            ("201, 202, 401, 402", &[201, 402], &[403], "201,202,401,402"),
            (
                "200-399",
                &[200, 204, 301, 399],
                &[199, 400, 500],
                "200-399",
            ),
            ("200 - 500", &[200, 500], &[199, 501], "200-500"),
            (
                "200,301-302",
                &[200, 301, 302],
                &[201, 300, 303],
                "200,301-302",
            ),
            ("100-599", &[100, 599], &[99, 600], "100-599"),
            ("404,200", &[200, 404], &[300], "404,200"),
        ];
        for &(text, yes, no, canonical) in cases {
            let codes = StatusCodes::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            for &c in yes {
                assert!(codes.matches(c), "{text} should match {c}");
            }
            for &c in no {
                assert!(!codes.matches(c), "{text} should not match {c}");
            }
            assert_eq!(codes.to_string(), canonical);
        }
    }

    #[test]
    fn errors_name_the_bad_part() {
        let cases: &[(&str, &str)] = &[
            ("", "status_codes is empty"),
            ("  ", "status_codes is empty"),
            ("200,", "status_codes `200,` has an empty entry"),
            ("200,,201", "has an empty entry"),
            ("abc", "status code `abc` is not a number"),
            ("2xx", "status code `2xx` is not a number"),
            ("-200", "status code `` is not a number"),
            ("200-", "status code `` is not a number"),
            ("200-300-400", "status code `300-400` is not a number"),
            ("+200", "status code `+200` is not a number"),
            ("99", "status code 99 is out of range 100-599"),
            ("600", "status code 600 is out of range 100-599"),
            ("200-600", "status code 600 is out of range 100-599"),
            ("99999999", "status code 99999999 is out of range 100-599"),
            (
                "399-200",
                "status code range 399-200 is reversed: write 200-399",
            ),
        ];
        for &(text, expect) in cases {
            let err = StatusCodes::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn default_is_200_to_399() {
        assert_eq!(
            StatusCodes::default(),
            StatusCodes::parse(crate::policy::limits::DEFAULT_STATUS_CODES).unwrap()
        );
    }
}
