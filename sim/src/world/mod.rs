//! One simulated run (`cfg(madsim)` only): a 3- or 5-node Raft lock cluster,
//! clients, the fenced resource and the nemesis, all madsim nodes in one
//! seeded simulation; returns the recorded history, checked.

mod client;
mod disk;
mod nemesis;
mod net;

use crate::bugs::Bug;
use crate::check::{check_all, CheckConfig, Report};
use crate::history::{Access, History, Op, ReplicaState, WaitRecord};
use fencelock_core::{LockKey, LockKind, Millis};
use fencelock_raft::log_store::LogStore;
use fencelock_raft::sim::{current_node, plant, reset, Planted, SimClock};
use fencelock_raft::state_machine::StateMachine;
use fencelock_raft::wire::{AdminRpc, ClientReply, ClientRpc};
use fencelock_raft::{LockNode, NodeConfig};
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Global simulated time as the history records it: the same frame as a node
/// clock with no offset (see [`fencelock_raft::sim::SimClock`]).
pub fn now() -> Millis {
    fencelock_raft::sim::global_ms() + 1_000
}

/// After healing, every wait must end within this long (past its deadline).
pub const LIVENESS_BOUND_MS: Millis = 30_000;
/// Hot keys.
pub const KEYS: usize = 3;
const RESOURCE_ADDR: &str = "10.0.1.1:7000";

/// The locks the workload uses: a mutex, a read/write lock, a leased mutex.
pub fn lock_specs() -> Vec<(LockKey, LockKind, Option<u64>)> {
    let key = |n: &str| LockKey::new("sim", n).expect("valid key");
    vec![
        (key("mutex"), LockKind::Exclusive, None),
        (key("rw"), LockKind::ReadWrite, None),
        (key("leased"), LockKind::Exclusive, Some(2_000)),
    ]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything the simulated nodes share with the harness.
pub struct World {
    history: Mutex<History>,
    faults: Mutex<Vec<(Millis, String)>>,
    stop: AtomicBool,
    nodes: Mutex<BTreeMap<u64, LockNode>>,
    pauses: Mutex<BTreeMap<u32, Millis>>,
    stale_reads: bool,
    verbose: bool,
}

impl World {
    fn record_op(&self, op: Op) {
        lock(&self.history).ops.push(op);
    }

    fn record_wait(&self, w: WaitRecord) {
        lock(&self.history).waits.push(w);
    }

    fn record_access(&self, a: Access) {
        lock(&self.history).accesses.push(a);
    }

    fn fault(&self, what: String) {
        if self.verbose {
            println!("{:>8} ms  nemesis: {what}", now());
        }
        lock(&self.faults).push((now(), what));
    }

    fn note_offset(&self, offset: i64) {
        let mut h = lock(&self.history);
        if offset < 0 {
            h.clock_behind = h.clock_behind.max(offset.unsigned_abs());
        } else {
            h.clock_ahead = h.clock_ahead.max(offset as u64);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn paused_until(&self, client: u32) -> Millis {
        lock(&self.pauses).get(&client).copied().unwrap_or(0)
    }

    fn pause(&self, client: u32, until: Millis) {
        lock(&self.pauses).insert(client, until);
    }

    fn unpause_all(&self) {
        lock(&self.pauses).clear();
    }

    fn remove_node(&self, id: u64) {
        lock(&self.nodes).remove(&id);
    }
}

/// How to run one seed.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub bugs: Vec<Bug>,
    pub verbose: bool,
    /// Length of the fault phase (simulated ms); 0 for the default.
    pub fault_ms: Millis,
    /// Overrides the nemesis: kills are always on, and this is the chance
    /// that a kill takes the whole cluster's power (default: as drawn, 0.3).
    /// Aims the simulation at durability bugs without changing how a seed
    /// draws everything else.
    pub power_loss: Option<f64>,
}

/// What one seed produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub seed: u64,
    pub sim_ms: Millis,
    pub faults: Vec<(Millis, String)>,
    pub history: History,
    pub report: Report,
    pub nodes: usize,
    pub clients: usize,
}

/// Runs one seed in a fresh madsim runtime on this thread, then checks it.
pub fn run_seed(seed: u64, options: &RunOptions) -> RunOutcome {
    let options2 = options.clone();
    let started = std::time::Instant::now();
    let (history, faults, sim_ms, nodes, clients) = with_seeded_tokio(seed, || {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(simulate(options2))
    });
    let simulated = started.elapsed();
    let report = check_all(
        &history,
        &CheckConfig {
            liveness_bound_ms: LIVENESS_BOUND_MS,
            ..CheckConfig::default()
        },
    );
    if let Ok(path) = std::env::var("FENCELOCK_SIM_DUMP") {
        let path = path.replace("{seed}", &seed.to_string());
        if let Ok(bytes) = postcard::to_allocvec(&history) {
            let _ = std::fs::write(format!("{path}.bin"), bytes);
        }
        let mut text = String::new();
        for op in &history.ops {
            text.push_str(&format!("{op:?}\n"));
        }
        for a in &history.accesses {
            text.push_str(&format!("{a:?}\n"));
        }
        for f in &faults {
            text.push_str(&format!("{f:?}\n"));
        }
        text.push_str(&format!("graces {:?}\n", history.graces));
        let _ = std::fs::write(path, text);
    }
    if options.verbose {
        println!(
            "wall time: simulation {:.1} s, checkers {:.1} s",
            simulated.as_secs_f64(),
            (started.elapsed() - simulated).as_secs_f64()
        );
    }
    RunOutcome {
        seed,
        sim_ms,
        faults,
        history,
        report,
        nodes,
        clients,
    }
}

type Simulated = (History, Vec<(Millis, String)>, Millis, usize, usize);

async fn simulate(options: RunOptions) -> Simulated {
    reset();
    if options.bugs.contains(&Bug::LocalClockApply) {
        plant(Planted::LocalClockApply, true);
    }
    if options.bugs.contains(&Bug::NewestWaiterFirst) {
        plant(Planted::NewestWaiterFirst, true);
    }
    let ack_early = options.bugs.contains(&Bug::AckBeforeFsync);
    let handle = Handle::current();
    // Snapshots go to real files (written atomically, so durable); the log
    // goes to the simulated disk.
    let root = std::env::temp_dir().join(format!(
        "fencelock-sim-{}-{}",
        std::process::id(),
        handle.seed()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let (n, clients, swarm) = {
        let mut rng = thread_rng();
        let n = if rng.gen_bool(0.3) { 5 } else { 3 };
        (n, rng.gen_range(4..9u32), nemesis::Swarm::draw())
    };
    let swarm = match options.power_loss {
        Some(p) => nemesis::Swarm {
            kill: true,
            power_loss: p.clamp(0.0, 1.0),
            ..swarm
        },
        None => swarm,
    };
    let world = Arc::new(World {
        history: Mutex::new(History::default()),
        faults: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        nodes: Mutex::new(BTreeMap::new()),
        pauses: Mutex::new(BTreeMap::new()),
        stale_reads: options.bugs.contains(&Bug::StaleRead),
        verbose: options.verbose,
    });
    world.fault(format!(
        "cluster of {n} nodes, {clients} clients, faults {swarm:?}, planted {:?}",
        options.bugs
    ));
    let addrs: Vec<String> = (1..=n).map(|i| format!("10.0.0.{i}:7000")).collect();
    let bugs = Arc::new(options.bugs.clone());
    let mut nodes = Vec::new();
    let fsync = Duration::from_millis(swarm.fsync_ms);
    let disks: Vec<Arc<disk::SimDisk>> = (0..n)
        .map(|_| Arc::new(disk::SimDisk::new(fsync)))
        .collect();
    for i in 1..=n {
        let (w, addr, bugs) = (world.clone(), addrs[i - 1].clone(), bugs.clone());
        let (disk, dir) = (disks[i - 1].clone(), root.join(format!("n{i}")));
        let node = handle
            .create_node()
            .name(format!("n{i}"))
            .ip(format!("10.0.0.{i}").parse().expect("valid ip"))
            .init(move || {
                let (w, addr, bugs) = (w.clone(), addr.clone(), bugs.clone());
                let (disk, dir) = (disk.clone(), dir.clone());
                async move {
                    let mut config = NodeConfig::new(i as u64, addr.clone(), dir.clone());
                    config.heartbeat_ms = 50;
                    config.election_min_ms = 200;
                    config.election_max_ms = 400;
                    config.snapshot_every = 300;
                    let clock = Arc::new(SimClock {
                        node: current_node(),
                    });
                    let sink = Arc::new(disk::SimSink::start(disk.clone(), ack_early));
                    let log = match LogStore::on_sink(&disk.durable(), sink) {
                        Ok(log) => log,
                        Err(e) => return w.fault(format!("n{i}: cannot open its log: {e}")),
                    };
                    let sm = match StateMachine::open(&dir) {
                        Ok(sm) => sm,
                        Err(e) => return w.fault(format!("n{i}: cannot open its snapshot: {e}")),
                    };
                    let transport = Arc::new(net::SimTransport);
                    match LockNode::start_with(config, log, sm, transport, clock).await {
                        Ok(node) => {
                            lock(&w.nodes).insert(i as u64, node.clone());
                            net::serve_node(node, addr, bugs).await;
                        }
                        Err(e) => w.fault(format!("n{i} failed to start: {e}")),
                    }
                }
            })
            .build();
        nodes.push(node);
    }
    let w = world.clone();
    handle
        .create_node()
        .name("resource")
        .ip("10.0.1.1".parse().expect("valid ip"))
        .init(move || net::serve_resource(RESOURCE_ADDR.to_string(), w.clone()))
        .build();
    let ctl = handle
        .create_node()
        .name("ctl")
        .ip("10.0.9.1".parse().expect("valid ip"))
        .build();
    // Form the cluster.
    let members: BTreeMap<u64, String> = (1..=n as u64).zip(addrs.iter().cloned()).collect();
    let first = addrs[0].clone();
    ctl.spawn(async move {
        madsim::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..50 {
            let rpc = ClientRpc::Admin(AdminRpc::Init {
                members: members.clone(),
            });
            if let Ok(net::Reply::Client(ClientReply::AdminDone(Ok(())))) =
                net::call(&first, net::Msg::Client(rpc), Duration::from_secs(1)).await
            {
                return;
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .ok();
    // Clients.
    let mut joins = Vec::new();
    let client_ids: Vec<u32> = (1..=clients).collect();
    for &c in &client_ids {
        let node = handle
            .create_node()
            .name(format!("c{c}"))
            .ip(format!("10.0.2.{c}").parse().expect("valid ip"))
            .build();
        let client = client::Client::new(c, addrs.clone(), world.clone());
        joins.push(node.spawn(async move {
            madsim::time::sleep(Duration::from_millis(if c == 1 { 0 } else { 300 })).await;
            client.run(c == 1).await
        }));
    }
    // Faults, then healing.
    let fault_ms = if options.fault_ms == 0 {
        20_000
    } else {
        options.fault_ms
    };
    let nemesis = nemesis::Nemesis::new(handle.clone(), nodes, disks, client_ids, world.clone());
    nemesis.run(&swarm, now() + fault_ms).await;
    nemesis.heal();
    let healed = now();
    lock(&world.history).healed_at = Some(healed);
    world.stop.store(true, Ordering::SeqCst);
    for j in joins {
        let _ = fencelock_raft::sim::timeout(Duration::from_millis(LIVENESS_BOUND_MS + 30_000), j)
            .await;
    }
    let replicas = converge(&world, n).await;
    lock(&world.history).replicas = replicas;
    lock(&world.history).graces = fencelock_raft::sim::graces();
    world.fault("end of run".to_string());
    let _ = std::fs::remove_dir_all(&root);
    let history = std::mem::take(&mut *lock(&world.history));
    let faults = std::mem::take(&mut *lock(&world.faults));
    (history, faults, now(), n, clients as usize)
}

/// Waits until every replica has applied the same entries (at most 30 s of
/// simulated time), then takes each one's lock table.
async fn converge(world: &World, n: usize) -> Vec<ReplicaState> {
    let mut states = Vec::new();
    for _ in 0..300 {
        madsim::time::sleep(Duration::from_millis(100)).await;
        states = lock(&world.nodes)
            .values()
            .map(|node| ReplicaState {
                node: node.id(),
                applied_index: node.applied_index(),
                table: node.table_bytes(),
            })
            .collect::<Vec<_>>();
        let same = states
            .windows(2)
            .all(|w| w[0].applied_index == w[1].applied_index);
        if states.len() == n && same {
            break;
        }
    }
    states
}

/// Runs `f` inside a tokio runtime whose random generator is seeded from
/// `seed`. `tokio::select!` (used by openraft and the node) picks branches
/// with tokio's thread-local generator, which tokio otherwise seeds from a
/// process-wide counter: two runs of one seed in one process would differ.
/// Seeding needs `--cfg tokio_unstable`, which the simulator build sets.
fn with_seeded_tokio<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    #[cfg(tokio_unstable)]
    {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
        if let Ok(rt) = builder.build() {
            // Unconstrained: tokio's co-operative budget would otherwise make
            // tokio::sync calls inside the simulation return Pending.
            return rt.block_on(tokio::task::unconstrained(async move { f() }));
        }
    }
    let _ = seed;
    f()
}

/// Runs `seed` twice, each on a fresh thread as the runner does, and
/// compares the whole trace: every operation with its times and result,
/// every fault, every fenced access, the final replica states.
pub fn check_determinism(seed: u64, options: &RunOptions) -> Result<(), String> {
    let options = RunOptions {
        verbose: false,
        ..options.clone()
    };
    let trace = || {
        let options = options.clone();
        std::thread::spawn(move || {
            let o = run_seed(seed, &options);
            format!("{} {:?} {:?}", o.sim_ms, o.faults, o.history)
        })
        .join()
        .map_err(|_| "the simulation panicked".to_string())
    };
    let (first, again) = (trace()?, trace()?);
    if first == again {
        Ok(())
    } else {
        let at = first
            .bytes()
            .zip(again.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(first.len().min(again.len()));
        let from = at.saturating_sub(200);
        Err(format!(
            "two runs recorded different traces; first difference at byte {at}:\n  {}\n  {}",
            &first[from..(at + 200).min(first.len())],
            &again[from..(at + 200).min(again.len())]
        ))
    }
}
