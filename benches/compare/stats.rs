//! Samples, their min / median / max, and the tables and report built from them.

use std::fmt::Write as _;

/// One measured quantity for one system.
#[derive(Clone, Debug)]
pub struct Series {
    pub system: String,
    pub samples: Vec<f64>,
    /// Why there are no samples, said in the cell instead (e.g. "not run
    /// (would need 9.4 GiB)").
    pub note: Option<String>,
}

impl Series {
    pub fn new(system: &str) -> Self {
        Self {
            system: system.to_string(),
            samples: Vec::new(),
            note: None,
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }

    pub fn median(&self) -> Option<f64> {
        let s = self.sorted();
        match s.len() {
            0 => None,
            n if n % 2 == 1 => Some(s[n / 2]),
            n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
        }
    }
}

/// A table of series measuring one thing, in `unit`, rvmm first.
#[derive(Clone, Debug)]
pub struct Table {
    pub title: String,
    pub unit: String,
    /// Whether more is better (throughput) or less (time, memory).
    pub higher_is_better: bool,
    pub series: Vec<Series>,
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".into(),
    }
}

impl Table {
    pub fn new(title: &str, unit: &str, higher_is_better: bool) -> Self {
        Self {
            title: title.into(),
            unit: unit.into(),
            higher_is_better,
            series: Vec::new(),
        }
    }

    pub fn median_of(&self, system: &str) -> Option<f64> {
        self.series
            .iter()
            .find(|s| s.system == system)
            .and_then(Series::median)
    }

    /// A plain-text table: min / median / max and each median's ratio to rvmm's.
    pub fn render(&self) -> String {
        let base = self.median_of("rvmm");
        let mut out = format!("\n{} ({})\n", self.title, self.unit);
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>4}",
            "system", "min", "median", "max", "x rvmm", "n"
        );
        for s in &self.series {
            if let (true, Some(note)) = (s.samples.is_empty(), &s.note) {
                let _ = writeln!(out, "  {:<16} {note}", s.system);
                continue;
            }
            let ratio = match (s.median(), base) {
                (Some(m), Some(b)) if b > 0.0 => format!("{:.2}", m / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>4}",
                s.system,
                cell(s.min()),
                cell(s.median()),
                cell(s.max()),
                ratio,
                s.samples.len()
            );
        }
        out
    }

    pub fn to_json(&self) -> String {
        let series: Vec<String> = self
            .series
            .iter()
            .map(|s| {
                let samples: Vec<String> = s.samples.iter().map(|v| format!("{v:.4}")).collect();
                let note = s
                    .note
                    .as_ref()
                    .map(|n| format!(r#","note":{}"#, serde_json::to_string(n).unwrap()))
                    .unwrap_or_default();
                format!(
                    r#"{{"system":"{}","min":{},"median":{},"max":{},"samples":[{}]{note}}}"#,
                    s.system,
                    s.min().map_or("null".into(), |v| format!("{v:.4}")),
                    s.median().map_or("null".into(), |v| format!("{v:.4}")),
                    s.max().map_or("null".into(), |v| format!("{v:.4}")),
                    samples.join(",")
                )
            })
            .collect();
        format!(
            r#"{{"title":"{}","unit":"{}","higher_is_better":{},"series":[{}]}}"#,
            self.title,
            self.unit,
            self.higher_is_better,
            series.join(",")
        )
    }
}

/// The comparison report: one row per table (its medians), one column per system.
pub fn markdown_report(tables: &[Table], systems: &[String], host: &str, method: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured by `cargo bench` on {host}. Medians, each with its sample count. {method}\n"
    );
    let _ = writeln!(out, "| measure | {} |", systems.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(systems.len()));
    for t in tables {
        let cells: Vec<String> = systems
            .iter()
            .map(|s| match t.series.iter().find(|x| &x.system == s) {
                Some(series) if !series.samples.is_empty() => {
                    format!("{} (n={})", cell(series.median()), series.samples.len())
                }
                Some(Series {
                    note: Some(note), ..
                }) => note.clone(),
                _ => "-".into(),
            })
            .collect();
        let _ = writeln!(out, "| {} ({}) | {} |", t.title, t.unit, cells.join(" | "));
    }
    out
}
