//! Scraping `lb run --metrics`: `curl` in the load balancer's namespace,
//! and the series of the text format read back by name and labels (the
//! values `lb` writes hold no quotes, commas or braces).
use std::{collections::BTreeMap, process::Command, time::Duration};

use crate::{Lab, LabError, Node};

/// The address the lab tests give `--metrics`.
pub const ADDR: &str = "127.0.0.1:9650";

/// One series: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape's series by metric name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scraped {
    pub series: BTreeMap<String, Vec<Series>>,
    /// The body's size in bytes.
    pub bytes: usize,
}

impl Scraped {
    /// Reads the text format (comments skipped).
    pub fn parse(text: &str) -> Scraped {
        let mut out = Scraped {
            bytes: text.len(),
            ..Scraped::default()
        };
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (head, value) = line.rsplit_once(' ').expect("name and value");
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            out.series
                .entry(name.to_string())
                .or_default()
                .push(Series { labels, value });
        }
        out
    }

    /// The sum of the series of `name` whose labels include all of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|s| s.value).sum()
    }

    /// The series of `name` whose labels include all of `with`.
    pub fn matching<'a>(
        &'a self,
        name: &str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.series
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
    }

    /// Whether a metric of that name was written.
    pub fn has(&self, name: &str) -> bool {
        self.series.contains_key(name)
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once("=\"").expect("key=\"value\"");
            (k.to_string(), v.trim_end_matches('"').to_string())
        })
        .collect()
}

/// `GET http://ADDR/metrics` from the load balancer's namespace: the body.
pub fn fetch(lab: &Lab, addr: &str) -> Result<String, LabError> {
    let url = format!("http://{addr}/metrics");
    crate::lab::run(
        lab.command(Node::Lb, "curl")
            .args(["-sS", "--fail", "--max-time"])
            .arg(Duration::from_secs(20).as_secs().to_string())
            .arg(&url),
    )
}

/// [`fetch`], parsed.
pub fn scrape(lab: &Lab, addr: &str) -> Scraped {
    let body = fetch(lab, addr).unwrap_or_else(|e| panic!("scrape {addr}: {e}"));
    Scraped::parse(&body)
}

/// A `curl` of `url` in `lab`'s load balancer namespace (for status codes).
pub fn curl(lab: &Lab, args: &[&str]) -> Command {
    let mut cmd = lab.command(Node::Lb, "curl");
    cmd.args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_by_labels() {
        let text = "# HELP a_total x\n# TYPE a_total counter\n\
                    a_total{group=\"web\",target=\"10.0.3.11\"} 3\n\
                    a_total{group=\"web\",target=\"10.0.3.12\"} 4\n\
                    a_total{group=\"dns\",target=\"10.0.3.11\"} 5\nb 1.5\n";
        let s = Scraped::parse(text);
        assert_eq!(s.sum("a_total", &[("group", "web")]), 7.0);
        assert_eq!(s.sum("a_total", &[("target", "10.0.3.11")]), 8.0);
        assert_eq!(s.sum("b", &[]), 1.5);
        assert!(!s.has("c"));
    }
}
