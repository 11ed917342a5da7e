//! Keys on the command line, and the `key` command.

use advisory_common::{Key, KeyValue, Preset};
use serde_json::json;

use crate::args::KeyArgs;
use crate::exit::Failure;

/// What the user typed as a KEY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyArg {
    /// `42`, `1,2`, `bigint:42`, `pair:(1,2)`.
    Number(Key),
    /// Anything else: a name, hashed by a preset.
    Name(String),
}

impl KeyArg {
    /// Parse a KEY argument. Only something that looks like a number and does not fit is an error.
    pub fn parse(s: &str) -> Result<KeyArg, Failure> {
        if let Some(name) = s.strip_prefix("name:") {
            return Ok(KeyArg::Name(name.to_owned()));
        }
        if let Some(n) = s.strip_prefix("bigint:") {
            return bigint(s, n.trim()).map(KeyArg::Number);
        }
        if let Some(p) = s.strip_prefix("pair:") {
            let p = p.trim();
            let inner = p
                .strip_prefix('(')
                .and_then(|p| p.strip_suffix(')'))
                .unwrap_or(p);
            return match inner.split_once(',') {
                Some((a, b)) => pair(s, a, b).map(KeyArg::Number),
                None => Err(bad(s, "expected pair:(a,b)")),
            };
        }
        if looks_numeric(s) {
            return bigint(s, s).map(KeyArg::Number);
        }
        if let Some((a, b)) = s.split_once(',')
            && looks_numeric(a.trim())
            && looks_numeric(b.trim())
        {
            return pair(s, a, b).map(KeyArg::Number);
        }
        Ok(KeyArg::Name(s.to_owned()))
    }

    /// The key under `preset` (default: [`Key::name`]); numbers are taken as they are.
    pub fn key(&self, preset: Option<Preset>) -> Key {
        match (self, preset) {
            (KeyArg::Number(k), _) => *k,
            (KeyArg::Name(n), Some(p)) => p.key(n),
            (KeyArg::Name(n), None) => Key::name(n),
        }
    }
}

/// Parse KEY and derive it under `preset`.
pub fn resolve(s: &str, preset: Option<Preset>) -> Result<Key, Failure> {
    Ok(KeyArg::parse(s)?.key(preset))
}

fn looks_numeric(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn bigint(whole: &str, n: &str) -> Result<Key, Failure> {
    n.parse::<i64>().map(Key::BigInt).map_err(|_| {
        bad(
            whole,
            "a bigint key must be an integer from -2^63 to 2^63-1",
        )
    })
}

fn pair(whole: &str, a: &str, b: &str) -> Result<Key, Failure> {
    match (a.trim().parse::<i32>(), b.trim().parse::<i32>()) {
        (Ok(a), Ok(b)) => Ok(Key::Pair(a, b)),
        _ => Err(bad(
            whole,
            "each half of a pair key must be an integer from -2^31 to 2^31-1",
        )),
    }
}

fn bad(s: &str, why: &str) -> Failure {
    Failure::usage(format!(
        "invalid key '{s}': {why} (use name:{s} for a name)"
    ))
}

/// `pg-advisory key NAME [--preset P | --all] [--json]`.
pub fn key(args: KeyArgs) -> Result<u8, Failure> {
    let presets: Vec<Preset> = match args.preset {
        Some(p) => vec![p],
        None => Preset::ALL.to_vec(),
    };
    let rows: Vec<Row> = presets.iter().map(|p| Row::new(*p, &args.name)).collect();
    if args.json {
        let v: Vec<_> = rows.iter().map(Row::json).collect();
        crate::exit::print(&format!("{:#}\n", serde_json::Value::Array(v)));
    } else {
        let blocks: Vec<String> = rows.iter().map(Row::text).collect();
        crate::exit::print(&blocks.join("\n"));
    }
    Ok(0)
}

struct Row {
    preset: Preset,
    key: Key,
    sql: Option<String>,
}

impl Row {
    fn new(preset: Preset, name: &str) -> Row {
        Row {
            preset,
            key: preset.key(name).unlabeled(),
            sql: preset.sql(name),
        }
    }

    fn text(&self) -> String {
        let (c, o, s) = self.key.classid_objid_objsubid();
        let sql = self
            .sql
            .as_deref()
            .unwrap_or("(none: not computable in plain SQL)");
        format!(
            "{}: {}\n  key       {}\n  lock      {}\n  pg_locks  classid={c} objid={o} objsubid={s}\n  sql       {sql}\n",
            self.preset.name(),
            self.preset.describe(),
            self.key,
            lock_call(self.key),
        )
    }

    fn json(&self) -> serde_json::Value {
        let (c, o, s) = self.key.classid_objid_objsubid();
        let mut v = json!({
            "preset": self.preset.name(),
            "description": self.preset.describe().to_string(),
            "key": self.key.to_string(),
            "classid": c,
            "objid": o,
            "objsubid": s,
            "sql": self.sql,
        });
        match self.key.value() {
            KeyValue::BigInt(k) => v["bigint"] = json!(k),
            KeyValue::Pair(a, b) => v["pair"] = json!([a, b]),
        }
        v
    }
}

/// `pg_advisory_lock(42)` / `pg_advisory_lock(1, 2)`: what to type in psql.
fn lock_call(key: Key) -> String {
    match key.value() {
        KeyValue::BigInt(k) => format!("pg_advisory_lock({k})"),
        KeyValue::Pair(a, b) => format!("pg_advisory_lock({a}, {b})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Key {
        match KeyArg::parse(s) {
            Ok(KeyArg::Number(k)) => k,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn numbers_pairs_and_names() {
        assert_eq!(num("42"), Key::BigInt(42));
        assert_eq!(num("-7"), Key::BigInt(-7));
        assert_eq!(num("1,2"), Key::Pair(1, 2));
        assert_eq!(num("-1, 2"), Key::Pair(-1, 2));
        assert_eq!(num("bigint:-42"), Key::BigInt(-42));
        assert_eq!(num("pair:(1,-2)"), Key::Pair(1, -2));
        assert_eq!(num("pair:1,2"), Key::Pair(1, 2));
        // what `list` prints parses back
        for k in [Key::BigInt(i64::MIN), Key::Pair(i32::MIN, i32::MAX)] {
            assert_eq!(num(&k.to_string()), k);
        }
        for name in ["orders:42", "a,b", "1,2,3", "", "42x", "name"] {
            assert_eq!(KeyArg::parse(name).unwrap(), KeyArg::Name(name.into()));
        }
        assert_eq!(KeyArg::parse("name:42").unwrap(), KeyArg::Name("42".into()));
        assert_eq!(
            KeyArg::parse("orders:42").unwrap().key(None),
            Key::name("orders:42")
        );
    }

    #[test]
    fn out_of_range_numbers_are_errors() {
        for bad in [
            "9223372036854775808",
            "1,2147483648",
            "bigint:x",
            "pair:(1)",
            "pair:(a,b)",
        ] {
            let e = KeyArg::parse(bad).unwrap_err();
            assert_eq!(e.code, crate::exit::USAGE, "{bad}");
            assert!(!e.message.contains('\n'));
        }
    }
}
