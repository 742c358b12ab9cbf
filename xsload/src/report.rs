//! The results sheet: one row per (case, metric), one cell per daemon, and
//! the ratios of rxenstored to the better
//! reference daemon and (for the `pairs` rows) to the floor. Printed as a text table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::daemons::Kind;

/// How a figure is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Requests (or domains, commits) per second.
    PerSec,
    /// Seconds.
    Secs,
    /// Microseconds.
    Micros,
    /// Bytes, shown in MiB.
    Bytes,
    /// Bytes, shown as is.
    SmallBytes,
    /// A count.
    Count,
    /// A dimensionless ratio.
    Ratio,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::PerSec => "per_s",
            Unit::Secs => "s",
            Unit::Micros => "us",
            Unit::Bytes | Unit::SmallBytes => "bytes",
            Unit::Count => "count",
            Unit::Ratio => "ratio",
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Unit::PerSec if v >= 10_000.0 => format!("{:.1}k", v / 1000.0),
            Unit::PerSec if v >= 100.0 => format!("{v:.0}"),
            Unit::PerSec => format!("{v:.1}"),
            Unit::Secs => format!("{v:.2} s"),
            Unit::Micros if v >= 100.0 => format!("{v:.0} µs"),
            Unit::Micros => format!("{v:.1} µs"),
            Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            Unit::SmallBytes => format!("{v:.0} B"),
            Unit::Count => format!("{v:.0}"),
            Unit::Ratio => format!("{v:.2}×"),
        }
    }
}

/// Which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Higher is better (throughput).
    Higher,
    /// Lower is better (time, latency, memory, retries).
    Lower,
    /// Not a figure of merit (no ratio).
    Neither,
}

/// One daemon's figure.
#[derive(Debug, Clone)]
pub enum Cell {
    /// A number in the row's unit.
    Num(f64),
    /// A number with a remark (e.g. events of a watcher that stalled).
    NumNote(f64, String),
    /// No number: `stalled`, `error`, `skipped`, …
    Text(String),
}

impl Cell {
    fn num(&self) -> Option<f64> {
        match self {
            Cell::Num(v) | Cell::NumNote(v, _) => Some(*v),
            _ => None,
        }
    }
}

/// One row.
#[derive(Debug, Clone)]
pub struct Row {
    case: String,
    metric: String,
    unit: Unit,
    better: Better,
    floor_ratio: bool,
    cells: BTreeMap<Kind, Cell>,
}

impl Row {
    /// rxenstored ÷ the better reference daemon, and which one that is.
    fn vs_best_ref(&self) -> Option<(f64, Kind)> {
        if self.better == Better::Neither {
            return None;
        }
        let rx = self.cells.get(&Kind::Rxenstored)?.num()?;
        let best =
            self.cells.iter().filter(|(k, _)| k.is_reference()).filter_map(|(k, c)| Some((c.num()?, *k))).reduce(
                |a, b| {
                    let b_better = match self.better {
                        Better::Higher => b.0 > a.0,
                        _ => b.0 < a.0,
                    };
                    if b_better { b } else { a }
                },
            )?;
        (best.0 > 0.0).then(|| (rx / best.0, best.1))
    }

    /// rxenstored ÷ floor.
    fn vs_floor(&self) -> Option<f64> {
        if !self.floor_ratio {
            return None;
        }
        let rx = self.cells.get(&Kind::Rxenstored)?.num()?;
        let floor = self.cells.get(&Kind::Floor)?.num()?;
        (floor > 0.0).then(|| rx / floor)
    }
}

/// All results of a run.
#[derive(Debug, Default)]
pub struct Sheet {
    rows: Vec<Row>,
    notes: Vec<String>,
    /// Runs that ended in a wrong reply, an unexpected error or a daemon
    /// that did not start: the tool then exits non-zero.
    pub failures: usize,
}

/// Where a row goes: case, metric, unit, which way is better.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    /// The case (workload and size).
    pub case: &'a str,
    /// What is measured.
    pub metric: &'a str,
    /// Unit.
    pub unit: Unit,
    /// Direction.
    pub better: Better,
}

impl Sheet {
    /// Sets one cell, creating the row if needed.
    pub fn set(&mut self, m: Metric<'_>, kind: Kind, cell: Cell) {
        let row = match self.rows.iter_mut().position(|r| r.case == m.case && r.metric == m.metric) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    case: m.case.into(),
                    metric: m.metric.into(),
                    unit: m.unit,
                    better: m.better,
                    floor_ratio: false,
                    cells: BTreeMap::new(),
                });
                let last = self.rows.len() - 1;
                &mut self.rows[last]
            }
        };
        row.cells.insert(kind, cell);
    }

    /// Marks a row as one whose rxenstored figure is also given as a
    /// fraction of the floor's.
    pub fn floor_ratio(&mut self, case: &str, metric: &str) {
        for r in &mut self.rows {
            if r.case == case && r.metric == metric {
                r.floor_ratio = true;
            }
        }
    }

    /// A number of a cell, if set.
    pub fn get(&self, case: &str, metric: &str, kind: Kind) -> Option<f64> {
        self.rows.iter().find(|r| r.case == case && r.metric == metric)?.cells.get(&kind)?.num()
    }

    /// Adds a note printed under the table.
    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("xsload: {s}");
        self.notes.push(s);
    }

    /// The text table.
    pub fn table(&self, daemons: &[Kind]) -> String {
        let with_floor = daemons.contains(&Kind::Floor);
        // Ratio columns when rxenstored is in the run.
        let with_rx = daemons.contains(&Kind::Rxenstored);
        let mut head: Vec<String> = vec!["case".into(), "metric".into()];
        head.extend(daemons.iter().map(|k| k.name().to_string()));
        if with_rx {
            head.push("rx ÷ best ref".into());
            if with_floor {
                head.push("rx ÷ floor".into());
            }
        }
        let mut lines: Vec<Vec<String>> = vec![head];
        for r in &self.rows {
            let arrow = match r.better {
                Better::Higher => " ↑",
                Better::Lower => " ↓",
                Better::Neither => "",
            };
            let mut line = vec![r.case.clone(), format!("{}{arrow}", r.metric)];
            for k in daemons {
                line.push(match r.cells.get(k) {
                    Some(Cell::Num(v)) => r.unit.show(*v),
                    Some(Cell::NumNote(v, n)) => format!("{} {n}", r.unit.show(*v)),
                    Some(Cell::Text(t)) => t.clone(),
                    None => "–".into(),
                });
            }
            if with_rx {
                line.push(match r.vs_best_ref() {
                    Some((x, best)) => format!("{x:.2} ({})", &best.name()[..2]),
                    None => "–".into(),
                });
                if with_floor {
                    line.push(r.vs_floor().map_or("–".into(), |x| format!("{x:.2}")));
                }
            }
            lines.push(line);
        }
        let cols = lines[0].len();
        let width: Vec<usize> =
            (0..cols).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            for (c, cell) in l.iter().enumerate() {
                let pad = width[c] - cell.chars().count();
                if c < 2 {
                    let _ = write!(out, "{cell}{}", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{}{cell}", " ".repeat(pad));
                }
                out.push_str(if c + 1 < cols { "  " } else { "\n" });
            }
            if i == 0 {
                let total: usize = width.iter().sum::<usize>() + 2 * (cols - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// The JSON document.
    pub fn json(&self, meta: Value) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let values: serde_json::Map<String, Value> = r
                    .cells
                    .iter()
                    .map(|(k, c)| {
                        let v = match c {
                            Cell::Num(v) => json!(v),
                            Cell::NumNote(v, n) => json!({ "value": v, "note": n }),
                            Cell::Text(t) => json!(t),
                        };
                        (k.name().to_string(), v)
                    })
                    .collect();
                json!({
                    "case": r.case,
                    "metric": r.metric,
                    "unit": r.unit.name(),
                    "better": match r.better {
                        Better::Higher => "higher",
                        Better::Lower => "lower",
                        Better::Neither => "neither",
                    },
                    "values": values,
                    "rx_vs_best_ref": r.vs_best_ref().map(|(x, k)| json!({ "ratio": x, "ref": k.name() })),
                    "rx_vs_floor": r.vs_floor(),
                })
            })
            .collect();
        json!({ "meta": meta, "rows": rows, "notes": self.notes, "failures": self.failures })
    }
}
