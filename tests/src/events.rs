//! The adapters' own `tracing` events, captured for tests: how often each message was emitted
//! for each key (the grant-at-timeout race tests count [`BOUNDARY`] events), and, on request, every
//! event as a line (the model-based tests show the library's decisions in a failure's log).
//!
//! One global subscriber per test process, installed on first use; it sees only the events of
//! `sqlx_advisory` and `diesel_advisory`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use advisory_common::Key;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, span};

/// Both adapters' debug event for a lock granted in the instant its `lock_timeout` fired.
pub const BOUNDARY: &str = "lock_timeout fired as the lock was granted; keeping it";

static COUNTS: Mutex<Option<HashMap<(String, String), u64>>> = Mutex::new(None);
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static KEEP_LINES: AtomicBool = AtomicBool::new(false);

struct Capture;

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let t = metadata.target();
        t.starts_with("sqlx_advisory") || t.starts_with("diesel_advisory")
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            key: String,
            line: String,
        }
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                let value = format!("{value:?}");
                self.line.push_str(&format!(" {}={value}", field.name()));
                match field.name() {
                    "message" => self.message = value,
                    "key" => self.key = value,
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if KEEP_LINES.load(Ordering::Relaxed) {
            LINES
                .lock()
                .unwrap()
                .push(format!("    [lib]{}", fields.line));
        }
        *COUNTS
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .entry((fields.message, fields.key))
            .or_insert(0) += 1;
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// Install the capturing subscriber (once per process; a no-op afterwards).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(Capture)
            .expect("no other global tracing subscriber in this test process");
    });
}

/// How many times an adapter has emitted `message` for `key` so far.
pub fn count(message: &str, key: Key) -> u64 {
    install();
    COUNTS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|c| c.get(&(message.to_owned(), key.to_string())).copied())
        .unwrap_or(0)
}

/// How many acquires of `key` an adapter reported as granted at the timeout boundary so far.
pub fn boundary_grants(key: Key) -> u64 {
    count(BOUNDARY, key)
}

/// Keep every event as a line from now on (see [`take_lines`]).
pub fn keep_lines() {
    install();
    KEEP_LINES.store(true, Ordering::Relaxed);
}

/// The lines kept since the last call, oldest first.
pub fn take_lines() -> Vec<String> {
    std::mem::take(&mut *LINES.lock().unwrap())
}
