//! `list` and `status`: what `pg_locks` says, decoded back to keys.

use std::io::IsTerminal as _;
use std::time::Duration;

use advisory_common::sql;
use advisory_common::{Key, KeyValue, LockInfo, Preset};
use serde_json::json;
use sqlx::{PgConnection, Row as _};

use crate::args::{ListArgs, StatusArgs};
use crate::conn;
use crate::exit::{self, Failure};
use crate::key::KeyArg;
use crate::table::{self, Lock};

/// Every advisory lock in the current database ([`sql::LOCKS_DETAIL_SQL`]).
pub async fn fetch(conn: &mut PgConnection) -> Result<Vec<Lock>, Failure> {
    let rows = sqlx::query(sql::LOCKS_DETAIL_SQL)
        .fetch_all(&mut *conn)
        .await?;
    let mut locks = Vec::with_capacity(rows.len());
    for r in rows {
        let info = LockInfo::from_row(
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get::<&str, _>(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
            r.try_get(8)?,
            r.try_get(9)?,
            r.try_get(10)?,
            r.try_get(11)?,
        );
        let Some(info) = info else { continue };
        locks.push(Lock {
            info,
            client_addr: r.try_get(12)?,
            session_age: r
                .try_get::<Option<f64>, _>(13)?
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
            blocked_by: r.try_get::<Option<Vec<i32>>, _>(14)?.unwrap_or_default(),
            blocking: Vec::new(),
            name: None,
        });
    }
    let waiters: Vec<(i32, Vec<i32>)> = locks
        .iter()
        .filter(|l| !l.info.granted)
        .map(|l| (l.info.pid, l.blocked_by.clone()))
        .collect();
    for l in locks.iter_mut().filter(|l| l.info.granted) {
        l.blocking = waiters
            .iter()
            .filter(|(_, by)| by.contains(&l.info.pid))
            .map(|(pid, _)| *pid)
            .collect();
        l.blocking.sort_unstable();
        l.blocking.dedup();
    }
    Ok(locks)
}

/// Keep the locks on the key given with `--key`: a number as it is, a name under `preset` or,
/// without one, under every preset (each kept row says which presets matched).
pub fn filter(locks: Vec<Lock>, key: &KeyArg, preset: Option<Preset>) -> Vec<Lock> {
    let candidates: Vec<(Key, &'static str)> = match (key, preset) {
        (KeyArg::Number(k), _) => vec![(*k, "")],
        (KeyArg::Name(n), Some(p)) => vec![(p.key(n), p.name())],
        (KeyArg::Name(n), None) => Preset::ALL.iter().map(|p| (p.key(n), p.name())).collect(),
    };
    locks
        .into_iter()
        .filter_map(|mut l| {
            let presets: Vec<&'static str> = candidates
                .iter()
                .filter(|(k, _)| *k == l.info.key)
                .map(|(_, p)| *p)
                .collect();
            if presets.is_empty() {
                return None;
            }
            if let KeyArg::Name(n) = key {
                l.name = Some((n.clone(), presets));
            }
            Some(l)
        })
        .collect()
}

/// `pg-advisory list`.
pub async fn list(conn_args: &crate::args::ConnArgs, args: ListArgs) -> Result<u8, Failure> {
    let key = args.key.as_deref().map(KeyArg::parse).transpose()?;
    let mut c = conn::connect(conn_args).await?;
    let tty = std::io::stdout().is_terminal();
    loop {
        let mut locks = fetch(&mut c).await?;
        if let Some(k) = &key {
            locks = filter(locks, k, args.preset);
        }
        if args.json {
            let v: Vec<_> = locks.iter().map(to_json).collect();
            let v = serde_json::Value::Array(v);
            if args.watch {
                exit::print(&format!("{v}\n"));
            } else {
                exit::print(&format!("{v:#}\n"));
            }
        } else {
            let mut text = String::new();
            if args.watch && tty {
                text.push_str("\x1b[H\x1b[2J");
                text.push_str(&format!(
                    "pg-advisory list, every {:?} (Ctrl-C to stop)\n\n",
                    args.interval
                ));
            }
            text.push_str(&table::render(&locks));
            exit::print(&text);
        }
        if !args.watch {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    conn::close(c).await;
    Ok(0)
}

/// `pg-advisory status KEY`: 0 free, 1 held (holders on stderr).
pub async fn status(conn_args: &crate::args::ConnArgs, args: StatusArgs) -> Result<u8, Failure> {
    let key = KeyArg::parse(&args.key)?.key(args.preset);
    let mut c = conn::connect(conn_args).await?;
    let holders = holders(&mut c, key).await?;
    conn::close(c).await;
    if holders.is_empty() {
        return Ok(0);
    }
    for h in &holders {
        eprintln!("pg-advisory: {key} {}", describe_holder(h));
    }
    Ok(1)
}

/// The sessions holding `key` in any mode.
pub async fn holders(conn: &mut PgConnection, key: Key) -> Result<Vec<Lock>, Failure> {
    let locks = fetch(conn).await?;
    Ok(locks
        .into_iter()
        .filter(|l| l.info.granted && l.info.key == key)
        .collect())
}

/// `is held (exclusive) by pid 4242 (application pg-advisory, user app, client 10.0.0.5, session age 5m12s)`.
pub fn describe_holder(l: &Lock) -> String {
    let mut parts = Vec::new();
    if let Some(a) = l.info.application_name.as_deref().filter(|a| !a.is_empty()) {
        parts.push(format!("application {a}"));
    }
    if let Some(u) = &l.info.user {
        parts.push(format!("user {u}"));
    }
    parts.push(format!(
        "client {}",
        l.client_addr.as_deref().unwrap_or("local")
    ));
    if let Some(age) = l.session_age {
        parts.push(format!("session age {}", table::human(age)));
    }
    format!(
        "is held ({}) by pid {} ({})",
        l.info.mode.as_str(),
        l.info.pid,
        parts.join(", ")
    )
}

fn secs(d: Option<Duration>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| json!(d.as_secs_f64()))
}

/// One lock as a JSON object (the `--json` format documented in cli/README.md).
pub fn to_json(l: &Lock) -> serde_json::Value {
    let i = &l.info;
    let (c, o, s) = i.key.classid_objid_objsubid();
    let mut v = json!({
        "key": i.key.unlabeled().to_string(),
        "classid": c,
        "objid": o,
        "objsubid": s,
        "name": l.name.as_ref().map(|n| &n.0),
        "presets": l.name.as_ref().map(|n| &n.1),
        "mode": i.mode.as_str(),
        "granted": i.granted,
        "state": if i.granted { "held" } else { "waiting" },
        "pid": i.pid,
        "application_name": i.application_name,
        "user": i.user,
        "client_addr": l.client_addr,
        "session_state": i.state,
        "waiting_seconds": secs(i.waiting_for),
        "transaction_seconds": secs(i.transaction_age),
        "session_seconds": secs(l.session_age),
        "blocked_by": l.blocked_by,
        "blocking": l.blocking,
        "query": i.query,
    });
    match i.key.value() {
        KeyValue::BigInt(k) => v["bigint"] = json!(k),
        KeyValue::Pair(a, b) => v["pair"] = json!([a, b]),
    }
    v
}
