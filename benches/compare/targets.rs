//! The targets, each checked against the medians this run measured
//! and stated in the report as met or not, with by how much.

use crate::restore::{COLD_TITLE, RESTORE_TITLE};
use crate::stats::Table;

/// What rvmm's median must be against the reference's.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// At most this many times the reference (time, memory, exits).
    AtMost(f64),
    /// Less than the reference.
    Below,
    /// At least this many times the reference (throughput, counts).
    AtLeast(f64),
}

/// One target: rvmm's median in the table whose title starts with `title`,
/// against `system`'s median there (or in the table `versus` names).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub title: &'static str,
    pub goal: Goal,
    pub system: &'static str,
    pub versus: Option<&'static str>,
}

const FC: &str = "firecracker";

const fn against_firecracker(title: &'static str, goal: Goal) -> Target {
    Target {
        title,
        goal,
        system: FC,
        versus: None,
    }
}

/// Every target of the issue that a section of the bench measures.
pub const TARGETS: &[Target] = &[
    against_firecracker(
        "start-up: process start to first guest output",
        Goal::AtMost(0.5),
    ),
    against_firecracker("start-up: process start to exit", Goal::AtMost(0.5)),
    against_firecracker(RESTORE_TITLE, Goal::AtMost(0.5)),
    // A restored VM answers before runc's container does.
    Target {
        title: RESTORE_TITLE,
        goal: Goal::Below,
        system: "runc container",
        versus: Some(COLD_TITLE),
    },
    against_firecracker("memory overhead, 128 MiB guest: USS", Goal::AtMost(0.5)),
    against_firecracker("memory overhead, 2048 MiB guest: USS", Goal::AtMost(0.5)),
    against_firecracker("density: PSS per instance, 100 running", Goal::AtMost(0.5)),
    against_firecracker(
        "density: most idle 128 MiB instances started at once",
        Goal::AtLeast(1.0),
    ),
    against_firecracker("density: time until all of 200 are up", Goal::Below),
    against_firecracker("block I/O, polled guest driver:", Goal::AtLeast(1.0)),
    against_firecracker("lab Linux: VM exits to user space, all", Goal::AtMost(1.0)),
    against_firecracker("lab block:", Goal::AtLeast(1.0)),
];

fn figure(value: f64, unit: &str) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.2} {unit}")
    }
}

/// One line for `target` in `table`: met or not, both medians, their ratio
/// and, when not met, how far rvmm is from the bound. None where this run
/// has no such comparison to make (the section did not run).
fn verdict(target: &Target, table: &Table, tables: &[Table]) -> Option<String> {
    let reference = match target.versus {
        Some(title) => tables.iter().find(|t| t.title == title)?,
        None => table,
    };
    let unit = table.unit.as_str();
    let (what, bound_factor) = match target.goal {
        Goal::AtMost(k) => (format!("at most {k}x {}'s", target.system), k),
        Goal::Below => (format!("below {}'s", target.system), 1.0),
        Goal::AtLeast(k) => (format!("at least {k}x {}'s", target.system), k),
    };
    let head = format!("{} ({unit}), rvmm {what}", table.title);
    let (Some(ours), Some(theirs)) = (table.median_of("rvmm"), reference.median_of(target.system))
    else {
        return Some(format!(
            "{head}: not measured in this run (a median is missing)"
        ));
    };
    let bound = theirs * bound_factor;
    let met = match target.goal {
        Goal::AtMost(_) => ours <= bound,
        Goal::Below => ours < bound,
        Goal::AtLeast(_) => ours >= bound,
    };
    let ratio = if theirs != 0.0 {
        format!(", {:.2}x", ours / theirs)
    } else {
        String::new()
    };
    let measured = format!(
        "{} against {}{ratio}",
        figure(ours, unit),
        figure(theirs, unit)
    );
    Some(if met {
        format!("{head}: met ({measured})")
    } else {
        let gap = (ours - bound).abs();
        let side = if let Goal::AtLeast(_) = target.goal {
            "under"
        } else {
            "over"
        };
        format!(
            "{head}: not met ({measured}; {} {side} the bound of {}, {:.0}%)",
            figure(gap, unit),
            figure(bound, unit),
            100.0 * gap / bound.abs().max(f64::MIN_POSITIVE)
        )
    })
}

/// A line per target and per table it applies to, in the order of
/// [`TARGETS`].
pub fn verdicts(tables: &[Table]) -> Vec<String> {
    TARGETS
        .iter()
        .flat_map(|target| {
            tables
                .iter()
                .filter(|t| t.title.starts_with(target.title))
                .filter_map(|table| verdict(target, table, tables))
        })
        .collect()
}
