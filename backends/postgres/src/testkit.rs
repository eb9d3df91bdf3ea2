//! A throwaway PostgreSQL server for tests, benches and fault tests.
//!
//! [`TempCluster::start`] runs `initdb` from the installed server binaries into
//! a temp dir and starts `postgres` on a free port of 127.0.0.1 with trust
//! auth; dropping it stops the server and removes the dir. Postgres refuses to
//! run as root, so when we are root the binaries run as the `postgres` OS user
//! (`runuser`) in a dir that user owns. A small watchdog process stops the
//! server if the test process dies without dropping it (panic=abort, a
//! `static` that is never dropped, a killed test run).
//!
//! [`shared_url`] gives every test of one binary the same server (started
//! once), or the server named by `FENCELOCK_PG_URL`; tests keep apart by using
//! their own Postgres schema ([`unique_schema`]).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Environment variable naming an existing server to test against instead.
pub const URL_ENV: &str = "FENCELOCK_PG_URL";
/// Environment variable naming the directory with `initdb`, `pg_ctl`, `postgres`.
pub const BIN_ENV: &str = "FENCELOCK_PG_BIN";

/// How durable the throwaway server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Postgres defaults (`fsync = on`, `synchronous_commit = on`): for benches.
    Default,
    /// `fsync = off`: fast tests; a crash of the *machine* may lose data,
    /// a restart of the server does not.
    NoFsync,
}

/// A running throwaway server. Stops and deletes itself on drop.
#[derive(Debug)]
pub struct TempCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres_user: bool,
    durability: Durability,
}

impl TempCluster {
    /// Creates and starts a fresh cluster.
    pub fn start(durability: Durability) -> io::Result<TempCluster> {
        let bin = find_bin_dir()?;
        let as_postgres_user = running_as_root();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fencelock-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("sock"))?;
        if as_postgres_user {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let mut cluster = TempCluster {
            dir,
            bin,
            port: 0,
            as_postgres_user,
            durability,
        };
        let mut initdb = cluster.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale=C"]);
        run(&mut initdb)?;
        spawn_watchdog(&cluster);
        // A free port can be taken between probing and binding: retry.
        let mut last_err = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// A connection URL for the superuser `postgres` on database `postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=5",
            self.port
        )
    }

    /// The TCP port the server listens on (kept across [`TempCluster::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `fsync` setting the server runs with, for bench reports.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Stops the server at once (`immediate`: like a crash, recovery on next
    /// start), then starts it again on the same port.
    pub fn restart(&self) -> io::Result<()> {
        self.stop()?;
        self.pg_ctl_start()
    }

    /// Stops the server (`-m immediate`, like a crash).
    pub fn stop(&self) -> io::Result<()> {
        let mut stop = self.pg_command("pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        run(&mut stop)
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> io::Result<()> {
        self.pg_ctl_start()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) -> io::Result<()> {
        let fsync = match self.durability {
            Durability::Default => "on",
            Durability::NoFsync => "off",
        };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync={fsync} \
             -c shared_buffers=64MB",
            self.port,
            self.dir.join("sock").display()
        );
        let mut start = self.pg_command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(&mut start).map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            io::Error::other(format!("{e}\nserver log:\n{log}"))
        })
    }

    fn pg_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URL every test of this process shares: `FENCELOCK_PG_URL` if set,
/// else one [`TempCluster`] (no fsync) started on first use. The cluster lives
/// until the process exits; its watchdog then stops it and deletes its files.
pub fn shared_url() -> String {
    if let Ok(url) = std::env::var(URL_ENV) {
        if !url.is_empty() {
            return url;
        }
    }
    static SHARED: OnceLock<Result<TempCluster, String>> = OnceLock::new();
    match SHARED.get_or_init(|| TempCluster::start(Durability::NoFsync).map_err(|e| e.to_string()))
    {
        Ok(cluster) => cluster.url(),
        Err(e) => panic!("cannot start a throwaway PostgreSQL for the tests: {e}"),
    }
}

/// A schema name no other test of any process uses, e.g. `t_4242_7_acquire`.
pub fn unique_schema(label: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!(
        "t_{}_{}_{clean}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn find_bin_dir() -> io::Result<PathBuf> {
    if let Ok(dir) = std::env::var(BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let candidates = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];
    if let Some(dir) = candidates
        .iter()
        .map(Path::new)
        .find(|d| d.join("initdb").exists())
    {
        return Ok(dir.to_path_buf());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no PostgreSQL server binaries (initdb) found; run scripts/setup.sh, \
             set {BIN_ENV}, or set {URL_ENV} to use an existing server"
        ),
    ))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

/// Starts a detached shell that waits for this process to exit, then stops
/// the server and removes its dir (a no-op if `Drop` already did).
fn spawn_watchdog(cluster: &TempCluster) {
    let pg_ctl = cluster.bin.join("pg_ctl");
    let as_user = if cluster.as_postgres_user {
        "runuser -u postgres -- "
    } else {
        ""
    };
    when_we_exit(&format!(
        "{as_user}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
        pg_ctl = pg_ctl.display(),
        data = cluster.data_dir().display(),
        dir = cluster.dir.display(),
    ));
}

/// Runs the shell `cleanup` in a detached process once this process has exited.
fn when_we_exit(cleanup: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
        pid = std::process::id()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A throwaway pgbouncer in **transaction** pooling mode in front of a
/// server: every transaction may run on a different server connection, so
/// anything that keeps state in a Postgres session breaks through it.
/// Stopped on drop.
#[derive(Debug)]
pub struct TempBouncer {
    dir: PathBuf,
    port: u16,
    child: std::process::Child,
}

impl TempBouncer {
    /// Starts pgbouncer (from `PATH` or `/usr/sbin`) for the server at
    /// `127.0.0.1:upstream_port`, with `server_connections` server connections.
    pub fn start(upstream_port: u16, server_connections: u32) -> io::Result<TempBouncer> {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "pgbouncer is not installed; run scripts/setup.sh",
                )
            })?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fencelock-pgb-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n")?;
        let ini = format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={upstream_port} dbname=postgres user=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = transaction\n\
             default_pool_size = {server_connections}\n\
             max_client_conn = 200\n\
             ignore_startup_parameters = extra_float_digits,application_name\n\
             logfile = {log}\n",
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini)?;
        let as_postgres_user = running_as_root();
        if as_postgres_user {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let mut cmd = Command::new(program);
        if as_postgres_user {
            // pgbouncer refuses to run as root; it switches user itself.
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let bouncer = TempBouncer { dir, port, child };
        // If this process dies without dropping it, stop it anyway.
        when_we_exit(&format!(
            "kill {it} 2>/dev/null; rm -rf '{dir}'",
            it = bouncer.child.id(),
            dir = bouncer.dir.display(),
        ));
        // Ready when it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
        Err(io::Error::other(format!("pgbouncer did not start:\n{log}")))
    }

    /// A URL that reaches the server through pgbouncer.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=5",
            self.port
        )
    }
}

impl Drop for TempBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates `schema` at an older `version` (for upgrade tests): the
/// migrations up to it, as a process of that version would have run them.
pub async fn migrate_to(url: &str, schema: &str, version: i32) -> Result<(), fencelock::Error> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(crate::error::db_error)?;
    let driver = tokio::spawn(connection);
    let migrated = crate::schema::migrate_to(&mut client, schema, version).await;
    drop(client);
    let _ = driver.await;
    migrated
}
