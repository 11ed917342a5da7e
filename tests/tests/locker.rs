//! The lock service (`sqlx_advisory::Locker`, and diesel-async's `diesel_advisory::Locker`)
//! against a real PostgreSQL server: what `pg_locks` and `pg_stat_activity` say, read on an
//! independent observer session. The suites are written once (`locker/suite.rs`,
//! `locker/failover_suite.rs`) and run on each adapter's locker.

/// The sqlx locker.
mod sqlx_locker {
    use sqlx_advisory::{Error, Locker, LockerOptions};

    fn make(app: &str) -> Locker {
        super::support::locker(app)
    }

    fn make_with(app: &str, options: LockerOptions) -> Locker {
        super::support::locker_with(app, options)
    }

    include!("locker/suite.rs");
}

/// The diesel-async locker (same engine and shell, tokio-postgres session).
mod diesel_locker {
    use diesel_advisory::{Error, Locker, LockerOptions};

    fn make(app: &str) -> Locker {
        super::support::dlocker(app)
    }

    fn make_with(app: &str, options: LockerOptions) -> Locker {
        super::support::dlocker_with(app, options)
    }

    include!("locker/suite.rs");
}

/// Failover across processes, sqlx locker.
mod failover {
    const CHILD: &str = "failover::leader_child";
    const LEADER_ENV: &str = "LOCKER_LEADER";

    fn make(app: &str) -> sqlx_advisory::Locker {
        super::support::locker(app)
    }

    fn leader(url: &str) -> sqlx_advisory::Locker {
        let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        sqlx_advisory::Locker::with_options(
            opts.application_name("locker-leader-child"),
            Default::default(),
        )
    }

    include!("locker/failover_suite.rs");
}

/// Failover across processes, diesel-async locker.
mod diesel_failover {
    const CHILD: &str = "diesel_failover::leader_child";
    const LEADER_ENV: &str = "DLOCKER_LEADER";

    fn make(app: &str) -> diesel_advisory::Locker {
        super::support::dlocker(app)
    }

    fn leader(url: &str) -> diesel_advisory::Locker {
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        config.application_name("dlocker-leader-child");
        diesel_advisory::Locker::with_config(config, Default::default())
    }

    include!("locker/failover_suite.rs");
}

#[path = "locker/diesel_load.rs"]
mod diesel_load;
#[path = "locker/load.rs"]
mod load;
#[path = "locker/model.rs"]
mod model;
#[path = "locker/support.rs"]
mod support;
