//! Drives the pure lock table through a short story and prints every step:
//! FIFO handoff, a reader batch, a lease expiring, a steal that fences out the
//! old holder. No clock is read: time is the number we pass in.

use fencelock_core::{Command, Event, LockError, LockKey, LockKind, Mode, Response, Table};

fn main() -> Result<(), LockError> {
    let mut table = Table::default();
    let mut events = Vec::new();
    let mut step = |table: &mut Table, now: u64, what: &str, cmd: Command| {
        events.clear();
        let out = table.apply(now, &cmd, &mut events);
        println!("t={now:>5}  {what:<38} -> {}", show(&out));
        for e in &events {
            println!("           event: {}", show_event(e));
        }
        out
    };

    let open = |table: &mut Table, ttl| table.open_session(0, ttl, &mut Vec::new());
    let (alice, bob, carol) = (
        open(&mut table, 60_000)?,
        open(&mut table, 60_000)?,
        open(&mut table, 60_000)?,
    );
    println!("sessions: alice={alice} bob={bob} carol={carol}\n");

    let job = LockKey::new("jobs", "nightly-report")?;
    let acq = |key: &LockKey, session, mode, timeout_ms| Command::Acquire {
        key: key.clone(),
        session,
        mode,
        timeout_ms,
    };

    println!("-- a mutex: FIFO handoff");
    let a = step(
        &mut table,
        1,
        "alice acquires",
        acq(&job, alice, Mode::Exclusive, None),
    )?;
    step(
        &mut table,
        2,
        "bob waits (5 s)",
        acq(&job, bob, Mode::Exclusive, Some(5_000)),
    )?;
    let _ = step(
        &mut table,
        3,
        "carol try-locks",
        acq(&job, carol, Mode::Exclusive, Some(0)),
    );
    let Response::Granted(a) = a else {
        unreachable!()
    };
    step(
        &mut table,
        4,
        "alice releases",
        Command::Release {
            key: job.clone(),
            session: alice,
            token: a.token,
        },
    )?;

    println!("\n-- a read/write lock: readers batch, writers do not starve");
    let cfg = LockKey::new("config", "service-a")?;
    step(
        &mut table,
        10,
        "create rw lock",
        Command::CreateLock {
            key: cfg.clone(),
            kind: LockKind::ReadWrite,
            ttl_ms: None,
        },
    )?;
    let r = step(
        &mut table,
        11,
        "alice reads",
        acq(&cfg, alice, Mode::Read, None),
    )?;
    step(
        &mut table,
        12,
        "bob wants to write",
        acq(&cfg, bob, Mode::Write, None),
    )?;
    step(
        &mut table,
        13,
        "carol reads (queues behind bob)",
        acq(&cfg, carol, Mode::Read, None),
    )?;
    let Response::Granted(r) = r else {
        unreachable!()
    };
    step(
        &mut table,
        14,
        "alice stops reading",
        Command::Release {
            key: cfg.clone(),
            session: alice,
            token: r.token,
        },
    )?;

    println!("\n-- a lease, and a steal that fences out the old holder");
    let lease = LockKey::new("leases", "shard-7")?;
    step(
        &mut table,
        20,
        "create lock with 1 s lease",
        Command::CreateLock {
            key: lease.clone(),
            kind: LockKind::Exclusive,
            ttl_ms: Some(1_000),
        },
    )?;
    step(
        &mut table,
        21,
        "alice acquires",
        acq(&lease, alice, Mode::Exclusive, None),
    )?;
    step(
        &mut table,
        22,
        "bob waits",
        acq(&lease, bob, Mode::Exclusive, None),
    )?;
    println!("           next deadline: {:?}", table.next_deadline());
    step(
        &mut table,
        1_500,
        "tick (alice's lease ended at 1021)",
        Command::Tick,
    )?;
    let b = table.describe(&lease).map(|d| d.holders[0].token);
    let stolen = step(
        &mut table,
        1_600,
        "carol steals",
        Command::Steal {
            key: lease.clone(),
            session: carol,
        },
    )?;
    if let Some(old) = b {
        println!(
            "           bob validates old token {old}: {}",
            show::<()>(&table.validate(1_601, &lease, old).map(|_| ()))
        );
    }
    if let Response::Granted(g) = stolen {
        println!(
            "           carol validates token {}: {}",
            g.token,
            show::<()>(&table.validate(1_601, &lease, g.token).map(|_| ()))
        );
    }
    table
        .check_invariants()
        .map_err(|e| LockError::InvalidArgument {
            field: "table".into(),
            reason: e,
        })?;
    println!(
        "\ninvariants hold; snapshot is {} bytes",
        table.snapshot_bytes()?.len()
    );
    Ok(())
}

fn show<T: std::fmt::Debug>(out: &Result<T, LockError>) -> String {
    match out {
        Ok(r) => format!("{r:?}"),
        Err(e) => format!("error {:?}: {e}", e.code()),
    }
}

fn show_event(e: &Event) -> String {
    match e {
        Event::Granted {
            key,
            session,
            grant,
            ..
        } => format!(
            "{session} granted {key} ({}) token {}",
            grant.mode, grant.token
        ),
        Event::WaitEnded {
            key,
            session,
            reason,
            ..
        } => format!("{session} stops waiting for {key}: {reason:?}"),
        Event::HoldLost {
            key,
            session,
            token,
            reason,
        } => format!("{session} lost {key} token {token}: {reason:?}"),
        Event::SessionExpired { session } => format!("{session} expired"),
    }
}
