//! The report: machine facts, a summary table (figure, value, goal, met?)
//! and one section of details per benchmark, written as Markdown to
//! `target/bench/report.md` and printed as a plain table.
use std::{fmt::Write as _, path::Path};

/// Whether this benchmark (and so the `lb` code it times) is an optimized
/// build: `cargo xtask bench` builds in release, `--quick` reuses the dev
/// build of `cargo xtask test`.
pub const OPTIMIZED: bool = !cfg!(debug_assertions);

/// One line of the summary table.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: String,
    /// The measured value, formatted with its unit.
    pub value: String,
    /// The goal as text (`<= 2x`); empty when the figure has none.
    pub goal: String,
    /// Whether the goal is met; None when there is no goal (or it could not
    /// be measured).
    pub met: Option<bool>,
}

impl Figure {
    /// A figure without a goal.
    pub fn info(name: impl Into<String>, value: impl Into<String>) -> Figure {
        Figure {
            name: name.into(),
            value: value.into(),
            goal: String::new(),
            met: None,
        }
    }

    /// A figure with a goal and whether it is met.
    pub fn goal(
        name: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        met: bool,
    ) -> Figure {
        Figure {
            name: name.into(),
            value: value.into(),
            goal: goal.into(),
            met: Some(met),
        }
    }

    /// A goal on the time or CPU `lb`'s own code takes: judged only when this
    /// benchmark is an optimized build (`cargo xtask bench`). `cargo xtask
    /// bench --quick` runs the dev build `cargo xtask test` made (the eBPF
    /// programs are optimized in every build, the userspace code is not),
    /// and reports such figures as not judged.
    pub fn cpu_goal(
        name: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        met: bool,
    ) -> Figure {
        let mut f = Figure::goal(name, value, goal, met);
        if !OPTIMIZED {
            f.met = None;
        }
        f
    }

    fn met_text(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "not met",
            None if !self.goal.is_empty() => "not judged (dev build)",
            None => "",
        }
    }
}

/// A benchmark's part of the report.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    /// Markdown: method and the detail tables.
    pub body: String,
    /// Its lines of the summary table.
    pub figures: Vec<Figure>,
    /// Plots (file names in the report's directory).
    pub plots: Vec<String>,
}

impl Section {
    pub fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            ..Section::default()
        }
    }

    /// Appends a line to the body.
    pub fn line(&mut self, text: impl AsRef<str>) {
        self.body.push_str(text.as_ref());
        self.body.push('\n');
    }

    /// Appends a Markdown table.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.body.push('\n');
        self.body.push_str(&markdown_table(header, rows));
        self.body.push('\n');
    }
}

/// What the figures were measured on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory: String,
    /// UTC, `2026-11-22 01:00 UTC`.
    pub date: String,
}

impl Machine {
    /// Reads /proc and uname.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kb| format!("{:.0} GiB", kb / 1048576.0),
            );
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            memory,
            date,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}, {} CPUs, {} memory, Linux {}, {}",
            self.cpu, self.cpus, self.memory, self.kernel, self.date
        )
    }
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    /// `--quick` or the full run, and how long it took.
    pub mode: String,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn figures(&self) -> impl Iterator<Item = &Figure> {
        self.sections.iter().flat_map(|s| &s.figures)
    }

    /// The summary table as Markdown.
    pub fn summary_markdown(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .figures()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.value.clone(),
                    f.goal.clone(),
                    f.met_text().into(),
                ]
            })
            .collect();
        markdown_table(&["figure", "value", "goal", "met?"], &rows)
    }

    /// The summary table as aligned plain text (for the terminal).
    pub fn summary_text(&self) -> String {
        let rows: Vec<[&str; 4]> = self
            .figures()
            .map(|f| [&*f.name, &*f.value, &*f.goal, f.met_text()])
            .collect();
        let header = ["figure", "value", "goal", "met?"];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from("# lb performance report\n\n");
        let _ = writeln!(md, "Machine: {}.  ", self.machine.one_line());
        let _ = writeln!(md, "Run: {}.\n", self.mode);
        md.push_str(
            "Ratios compare figures measured in the same run, so they hold on a shared, noisy machine; absolute times vary with the load. See docs/bench.md for the methods.\n\n",
        );
        md.push_str("## Summary\n\n");
        md.push_str(&self.summary_markdown());
        for s in &self.sections {
            let _ = write!(md, "\n## {}\n\n{}", s.title, s.body);
            for p in &s.plots {
                let _ = write!(md, "\n![{p}]({p})\n");
            }
        }
        md
    }

    /// Writes `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())
    }
}

/// A Markdown table (cells must not contain `|`).
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| " --- |").collect::<String>()
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

/// A count with thousands separators (`1,048,576`).
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds with one decimal.
pub fn fmt_ns(ns: f64) -> String {
    format!("{ns:.1} ns")
}

/// A duration in seconds, in the unit that reads best.
pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Bytes in the binary unit that reads best.
pub fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1048576.0 {
        format!("{:.2} GiB", b / (1024.0 * 1048576.0))
    } else if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// A rate with a metric prefix (`1.23 M`).
pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0} ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut s = Section::new("Data plane");
        s.figures
            .push(Figure::goal("ratio", "4.80x", "<= 2x", false));
        s.figures.push(Figure::info("count", "12"));
        s.line("method");
        s.plots.push("p.svg".into());
        Report {
            machine: Machine {
                cpu: "CPU X".into(),
                cpus: 2,
                kernel: "6.18".into(),
                memory: "24 GiB".into(),
                date: "2026-11-22 01:00 UTC".into(),
            },
            mode: "quick".into(),
            sections: vec![s],
        }
    }

    #[test]
    fn summary_has_goal_and_met_columns() {
        let md = report().summary_markdown();
        assert_eq!(
            md,
            "| figure | value | goal | met? |\n| --- | --- | --- | --- |\n| ratio | 4.80x | <= 2x | not met |\n| count | 12 |  |  |\n"
        );
        let text = report().summary_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "figure  value  goal   met?");
        assert_eq!(lines[1], "ratio   4.80x  <= 2x  not met");
        assert_eq!(lines[2], "count   12");
    }

    #[test]
    fn markdown_names_the_machine_and_links_plots() {
        let md = report().markdown();
        assert!(
            md.contains("Machine: CPU X, 2 CPUs, 24 GiB memory, Linux 6.18, 2026-11-22 01:00 UTC.")
        );
        assert!(md.contains("## Data plane\n\nmethod\n"));
        assert!(md.contains("![p.svg](p.svg)"));
    }

    #[test]
    fn goals_on_userspace_time_are_judged_only_in_optimized_builds() {
        let f = Figure::cpu_goal("apply", "3.2 s", "< 2 s", false);
        if OPTIMIZED {
            assert_eq!((f.met, f.met_text()), (Some(false), "not met"));
        } else {
            assert_eq!((f.met, f.met_text()), (None, "not judged (dev build)"));
        }
        // Other goals are judged in every build.
        assert_eq!(Figure::goal("x", "1", "0", false).met_text(), "not met");
        assert_eq!(Figure::info("x", "1").met_text(), "");
    }

    #[test]
    fn units() {
        assert_eq!(fmt_secs(0.000_512), "512.0 µs");
        assert_eq!(fmt_secs(0.0123), "12.30 ms");
        assert_eq!(fmt_secs(2.5), "2.50 s");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 * 1048576), "3.0 MiB");
        assert_eq!(fmt_rate(1_234_567.0), "1.23 M");
        assert_eq!(fmt_rate(9_500.0), "9.5 k");
        assert_eq!(fmt_count(1_048_576), "1,048,576");
        assert_eq!(fmt_count(65_536), "65,536");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(0), "0");
    }
}
