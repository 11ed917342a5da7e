//! The `list` table: aligned columns, humanised ages.

use std::time::Duration;

use advisory_common::LockInfo;

/// One advisory lock held or awaited, with everything `list` shows.
#[derive(Debug)]
pub struct Lock {
    pub info: LockInfo,
    pub client_addr: Option<String>,
    pub session_age: Option<Duration>,
    pub blocked_by: Vec<i32>,
    /// The pids of the waiters this holder blocks (computed from every waiter's `blocked_by`).
    pub blocking: Vec<i32>,
    /// The name given with `--key`, and the presets under which it maps to this key.
    pub name: Option<(String, Vec<&'static str>)>,
}

const HEADERS: [&str; 11] = [
    "KEY",
    "MODE",
    "STATE",
    "PID",
    "APP",
    "USER",
    "CLIENT",
    "AGE",
    "BLOCKED BY",
    "BLOCKS",
    "QUERY",
];

/// The longest query shown in the table (the JSON has it whole).
const QUERY_WIDTH: usize = 60;

/// The table, one line per lock, or a line saying there are none.
pub fn render(locks: &[Lock]) -> String {
    if locks.is_empty() {
        return "no advisory locks\n".to_owned();
    }
    let rows: Vec<[String; 11]> = locks.iter().map(cells).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let pad = w - c.chars().count();
                l.push_str(c);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&HEADERS.map(String::from));
    for r in &rows {
        line(r);
    }
    out
}

fn cells(l: &Lock) -> [String; 11] {
    let i = &l.info;
    let key = match &l.name {
        Some((name, presets)) => format!("{} ({name}: {})", i.key.unlabeled(), presets.join(", ")),
        None => i.key.unlabeled().to_string(),
    };
    let age = if i.granted {
        l.session_age.map(|d| format!("≤{}", human(d)))
    } else {
        i.waiting_for.map(human)
    };
    [
        key,
        i.mode.as_str().to_owned(),
        if i.granted { "held" } else { "waiting" }.to_owned(),
        i.pid.to_string(),
        dash(i.application_name.as_deref()),
        dash(i.user.as_deref()),
        l.client_addr.clone().unwrap_or_else(|| "local".to_owned()),
        age.unwrap_or_else(|| "-".to_owned()),
        pids(&l.blocked_by),
        pids(&l.blocking),
        query(i.query.as_deref()),
    ]
}

fn dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "-".to_owned(),
    }
}

fn pids(p: &[i32]) -> String {
    if p.is_empty() {
        return "-".to_owned();
    }
    p.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// The query on one line, cut to [`QUERY_WIDTH`] characters.
fn query(q: Option<&str>) -> String {
    let one = crate::exit::one_line(q.unwrap_or(""));
    if one.is_empty() {
        return "-".to_owned();
    }
    if one.chars().count() <= QUERY_WIDTH {
        return one;
    }
    let mut cut: String = one.chars().take(QUERY_WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// `0.25s`, `42s`, `5m12s`, `2h05m`, `3d04h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..10 => format!("{:.2}s", d.as_secs_f64()),
        10..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(human(Duration::from_millis(250)), "0.25s");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(312)), "5m12s");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 5 * 60)), "2h05m");
        assert_eq!(human(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
    }

    #[test]
    fn long_queries_are_cut_on_one_line() {
        let q = query(Some(&format!("SELECT\n  {}", "x".repeat(100))));
        assert_eq!(q.chars().count(), QUERY_WIDTH);
        assert!(q.starts_with("SELECT xxx") && q.ends_with('…'));
        assert_eq!(query(None), "-");
    }
}
