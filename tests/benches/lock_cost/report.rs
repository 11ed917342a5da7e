//! Figures: median and spread over repetitions, a table for people and JSON for machines.

use std::fmt::Write as _;

/// One measured figure: every repetition's value, and optionally the floor it is compared with.
#[derive(Debug, Clone)]
pub struct Figure {
    pub section: &'static str,
    pub path: String,
    pub metric: &'static str,
    pub unit: &'static str,
    pub values: Vec<f64>,
    /// (name of the baseline, its values)
    pub baseline: Option<(String, Vec<f64>)>,
    /// `true` when bigger is better (ops/s), `false` for times; the ratio is always ours / baseline.
    pub higher_is_better: bool,
    pub note: String,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

impl Figure {
    pub fn ratio(&self) -> Option<f64> {
        let (_, b) = self.baseline.as_ref()?;
        if b.len() == self.values.len() && b.len() > 1 {
            // paired: each repetition ran ours and its baseline back to back, so the median of the
            // per-repetition ratios cancels most of the machine's drift between repetitions
            let r: Vec<f64> = self.values.iter().zip(b).map(|(o, b)| o / b).collect();
            return Some(median(&r));
        }
        Some(median(&self.values) / median(b))
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn table(header: &str, figs: &[Figure]) -> String {
    let mut out = String::new();
    writeln!(out, "{header}").unwrap();
    writeln!(
        out,
        "ratio = ours / baseline, the median of the per-repetition ratios (throughput: higher is better; latency: lower is better)"
    )
    .unwrap();
    let mut section = "";
    for f in figs {
        if f.section != section {
            section = f.section;
            writeln!(out, "\n## {section}").unwrap();
            writeln!(
                out,
                "{:<34} {:<16} {:>10} {:>19} | {:<30} {:>10} {:>19} | {:>6}",
                "path", "metric", "median", "min..max", "baseline", "median", "min..max", "ratio"
            )
            .unwrap();
        }
        let (lo, hi) = spread(&f.values);
        let (bname, bmed, bspread) = match &f.baseline {
            Some((n, b)) => {
                let (l, h) = spread(b);
                (n.clone(), num(median(b)), format!("{}..{}", num(l), num(h)))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        writeln!(
            out,
            "{:<34} {:<16} {:>10} {:>19} | {:<30} {:>10} {:>19} | {:>6}{}",
            f.path,
            format!("{} ({})", f.metric, f.unit),
            num(median(&f.values)),
            format!("{}..{}", num(lo), num(hi)),
            bname,
            bmed,
            bspread,
            f.ratio()
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".into()),
            if f.note.is_empty() {
                String::new()
            } else {
                format!("  {}", f.note)
            }
        )
        .unwrap();
    }
    out
}

fn jstr(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => write!(o, "\\u{:04x}", c as u32).unwrap(),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn jarr(v: &[f64]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|x| {
            if x.is_finite() {
                format!("{x}")
            } else {
                "null".into()
            }
        })
        .collect();
    format!("[{}]", items.join(","))
}

pub fn json(machine: &str, figs: &[Figure]) -> String {
    let rows: Vec<String> = figs
        .iter()
        .map(|f| {
            let base = match &f.baseline {
                Some((n, b)) => format!(
                    "{{\"name\":{},\"median\":{},\"values\":{}}}",
                    jstr(n),
                    jarr(&[median(b)]).trim_matches(|c| c == '[' || c == ']'),
                    jarr(b)
                ),
                None => "null".into(),
            };
            format!(
                "{{\"section\":{},\"path\":{},\"metric\":{},\"unit\":{},\"median\":{},\"values\":{},\"baseline\":{},\"ratio\":{},\"note\":{}}}",
                jstr(f.section),
                jstr(&f.path),
                jstr(f.metric),
                jstr(f.unit),
                jarr(&[median(&f.values)]).trim_matches(|c| c == '[' || c == ']'),
                jarr(&f.values),
                base,
                f.ratio().filter(|r| r.is_finite()).map(|r| format!("{r}")).unwrap_or_else(|| "null".into()),
                jstr(&f.note)
            )
        })
        .collect();
    format!(
        "{{\"machine\":{},\"figures\":[\n{}\n]}}",
        jstr(machine),
        rows.join(",\n")
    )
}
