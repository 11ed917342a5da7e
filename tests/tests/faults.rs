//! Faults, load and hostile input (issue: "prove the locks hold when the database misbehaves").
//!
//! Every scenario runs against every adapter path it applies to, on a real PostgreSQL, and prints one
//! `SUMMARY` line of figures per scenario and path to stderr (visible in CI without `--nocapture`).
//! Server restarts live in their own binary (`fault_restart.rs`) because they cut every session.

mod faults {
    pub mod bouncer;
    pub mod diesel_side;
    pub mod hostile;
    pub mod sqlx_side;
    pub mod support;
}
