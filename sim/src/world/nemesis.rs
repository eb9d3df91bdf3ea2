//! The nemesis: named faults, each logged with its simulated time. Which
//! kinds are on, and how often they strike, is drawn per seed (a swarm of
//! fault mixes), so different seeds stress different combinations.

use super::disk::SimDisk;
use super::{now, World};
use fencelock_raft::sim::{clock_offset, set_clock_offset};
use madsim::net::NetSim;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which fault kinds a seed uses.
#[derive(Debug, Clone)]
pub struct Swarm {
    pub kill: bool,
    pub partition: bool,
    pub loss: bool,
    pub delay: bool,
    pub clock: bool,
    pub pause: bool,
    /// Mean gap between faults.
    pub gap_ms: u64,
    /// How long an fsync takes on every disk (fast to slow disks).
    pub fsync_ms: u64,
    /// Chance that a kill (with every node up) is a whole-cluster power loss.
    pub power_loss: f64,
}

impl Swarm {
    pub fn draw() -> Swarm {
        let mut rng = thread_rng();
        let mut s = Swarm {
            kill: rng.gen_bool(0.6),
            partition: rng.gen_bool(0.6),
            loss: rng.gen_bool(0.4),
            delay: rng.gen_bool(0.4),
            clock: rng.gen_bool(0.5),
            pause: rng.gen_bool(0.6),
            gap_ms: rng.gen_range(300..2_500),
            fsync_ms: rng.gen_range(5..=50),
            // Fixed, not drawn: a seed's schedule stays what it was.
            power_loss: 0.3,
        };
        if !(s.kill || s.partition || s.loss || s.delay || s.clock || s.pause) {
            s.kill = true;
        }
        s
    }

    fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        for (on, name) in [
            (self.kill, "kill"),
            (self.partition, "partition"),
            (self.loss, "loss"),
            (self.delay, "delay"),
            (self.clock, "clock"),
            (self.pause, "pause"),
        ] {
            if on {
                k.push(name);
            }
        }
        k
    }
}

/// The faults' shared state: what is down, partitioned or slowed now.
pub struct Nemesis {
    handle: Handle,
    nodes: Vec<NodeHandle>,
    disks: Vec<Arc<SimDisk>>,
    clients: Vec<u32>,
    world: Arc<World>,
    down: Arc<Mutex<BTreeSet<usize>>>,
    partitioned: Arc<Mutex<bool>>,
}

impl Nemesis {
    pub fn new(
        handle: Handle,
        nodes: Vec<NodeHandle>,
        disks: Vec<Arc<SimDisk>>,
        clients: Vec<u32>,
        world: Arc<World>,
    ) -> Self {
        Nemesis {
            handle,
            nodes,
            disks,
            clients,
            world,
            down: Arc::default(),
            partitioned: Arc::default(),
        }
    }

    /// Injects faults from `swarm` until global time `until`.
    pub async fn run(&self, swarm: &Swarm, until: u64) {
        let kinds = swarm.kinds();
        while now() < until {
            let (gap, kind) = {
                let mut rng = thread_rng();
                (
                    rng.gen_range(swarm.gap_ms / 2..swarm.gap_ms * 3 / 2 + 1),
                    kinds[rng.gen_range(0..kinds.len())],
                )
            };
            madsim::time::sleep(Duration::from_millis(gap)).await;
            match kind {
                "kill" => self.kill(swarm.power_loss).await,
                "partition" => self.partition(),
                "loss" => self.loss(),
                "delay" => self.delay(),
                "clock" => self.clock(),
                _ => self.pause(),
            }
        }
    }

    fn leader(&self) -> Option<usize> {
        let nodes = self.world.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.values().find_map(|n| {
            let m = n.raft().metrics().borrow().clone();
            (m.current_leader == Some(n.id())).then_some(n.id() as usize - 1)
        })
    }

    /// Waits (up to 300 ms) until one of `disks` holds an unsynced record
    /// (64 bytes or more: an entry, not just a commit mark), then a random
    /// part of an fsync, so that a crash lands somewhere in the middle of a
    /// write, as it does on real disks (with the page cache still dirty).
    async fn mid_write(&self, disks: &[usize]) {
        for _ in 0..300 {
            if disks.iter().any(|&i| self.disks[i].unsynced() >= 64) {
                let fsync = self.disks[disks[0]].fsync().as_millis() as u64;
                let into = thread_rng().gen_range(0..fsync.max(1));
                madsim::time::sleep(Duration::from_millis(into)).await;
                return;
            }
            madsim::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn kill(&self, power_loss: f64) {
        let n = self.nodes.len();
        let all: Vec<usize> = (0..n).collect();
        if self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && thread_rng().gen_bool(power_loss)
        {
            self.mid_write(&all).await;
            return self.power_loss();
        }
        self.mid_write(&all).await;
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.len() >= (n - 1) / 2 {
            return;
        }
        let mut rng = thread_rng();
        let victim = match self.leader() {
            Some(l) if rng.gen_bool(0.5) && !down.contains(&l) => l,
            _ => {
                let up: Vec<usize> = (0..n).filter(|i| !down.contains(i)).collect();
                up[rng.gen_range(0..up.len())]
            }
        };
        down.insert(victim);
        self.handle.kill(self.nodes[victim].id());
        let lost = self.disks[victim].crash();
        self.world.remove_node(victim as u64 + 1);
        let back_in = rng.gen_range(300..4_000);
        self.world.fault(format!(
            "kill n{} ({lost} unsynced log bytes lost), restart in {back_in} ms",
            victim + 1
        ));
        let (handle, id, down2, world) = (
            self.handle.clone(),
            self.nodes[victim].id(),
            self.down.clone(),
            self.world.clone(),
        );
        madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(back_in)).await;
            let mut down = down2.lock().unwrap_or_else(|p| p.into_inner());
            if down.remove(&victim) {
                handle.restart(id);
                world.fault(format!("restart n{}", victim + 1));
            }
        });
    }

    /// Every node loses power at once (what was not fsynced is lost on all
    /// of them) and comes back a little later.
    fn power_loss(&self) {
        let n = self.nodes.len();
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost = 0;
        for i in 0..n {
            down.insert(i);
            self.handle.kill(self.nodes[i].id());
            lost += self.disks[i].crash();
            self.world.remove_node(i as u64 + 1);
        }
        let back_in = thread_rng().gen_range(300..2_000);
        self.world.fault(format!(
            "power loss of all {n} nodes ({lost} unsynced log bytes lost), back in {back_in} ms"
        ));
        let (handle, ids, down2, world) = (
            self.handle.clone(),
            self.nodes.iter().map(|h| h.id()).collect::<Vec<_>>(),
            self.down.clone(),
            self.world.clone(),
        );
        madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(back_in)).await;
            let mut down = down2.lock().unwrap_or_else(|p| p.into_inner());
            for (i, id) in ids.into_iter().enumerate() {
                if down.remove(&i) {
                    handle.restart(id);
                }
            }
            world.fault("power back on every node".to_string());
        });
    }

    fn partition(&self) {
        let mut busy = self.partitioned.lock().unwrap_or_else(|p| p.into_inner());
        if *busy {
            return;
        }
        let n = self.nodes.len();
        let mut rng = thread_rng();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        // Pairs of nodes that cannot talk.
        let mut cut: Vec<(usize, usize)> = Vec::new();
        let name = match rng.gen_range(0..3) {
            0 => {
                let Some(l) = self.leader() else { return };
                for o in (0..n).filter(|&o| o != l) {
                    cut.push((l, o));
                }
                format!("isolate leader n{}", l + 1)
            }
            1 => {
                let minority = &order[..(n - 1) / 2 + usize::from(rng.gen_bool(0.3))];
                let majority = &order[minority.len()..];
                for &a in minority {
                    for &b in majority {
                        cut.push((a, b));
                    }
                }
                format!(
                    "partition {:?} | {:?}",
                    minority.iter().map(|i| i + 1).collect::<Vec<_>>(),
                    majority.iter().map(|i| i + 1).collect::<Vec<_>>()
                )
            }
            _ => {
                // A bridge: two sides that only the middle node connects.
                let bridge = order[0];
                let rest = &order[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                for &a in left {
                    for &b in right {
                        cut.push((a, b));
                    }
                }
                format!(
                    "bridge through n{}: {:?} | {:?}",
                    bridge + 1,
                    left.iter().map(|i| i + 1).collect::<Vec<_>>(),
                    right.iter().map(|i| i + 1).collect::<Vec<_>>()
                )
            }
        };
        let net = NetSim::current();
        for &(a, b) in &cut {
            net.clog_link(self.nodes[a].id(), self.nodes[b].id());
            net.clog_link(self.nodes[b].id(), self.nodes[a].id());
        }
        *busy = true;
        let lasts = rng.gen_range(500..5_000);
        self.world.fault(format!("{name} for {lasts} ms"));
        let ids: Vec<_> = cut
            .iter()
            .map(|&(a, b)| (self.nodes[a].id(), self.nodes[b].id()))
            .collect();
        let (flag, world) = (self.partitioned.clone(), self.world.clone());
        madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(lasts)).await;
            let net = NetSim::current();
            for (a, b) in ids {
                net.unclog_link(a, b);
                net.unclog_link(b, a);
            }
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = false;
            world.fault("partition healed".to_string());
        });
    }

    fn loss(&self) {
        let (rate, lasts) = {
            let mut rng = thread_rng();
            (rng.gen_range(0.02..0.3), rng.gen_range(500..4_000))
        };
        NetSim::current().update_config(|c| c.packet_loss_rate = rate);
        self.world
            .fault(format!("packet loss {:.0}% for {lasts} ms", rate * 100.0));
        let world = self.world.clone();
        madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(lasts)).await;
            NetSim::current().update_config(|c| c.packet_loss_rate = 0.0);
            world.fault("packet loss over".to_string());
        });
    }

    fn delay(&self) {
        let (max, lasts) = {
            let mut rng = thread_rng();
            (rng.gen_range(20..400), rng.gen_range(500..4_000))
        };
        NetSim::current().update_config(|c| {
            c.send_latency = Duration::from_millis(1)..Duration::from_millis(max)
        });
        self.world
            .fault(format!("message delay up to {max} ms for {lasts} ms"));
        let world = self.world.clone();
        madsim::task::spawn(async move {
            madsim::time::sleep(Duration::from_millis(lasts)).await;
            NetSim::current().update_config(|c| {
                c.send_latency = Duration::from_millis(1)..Duration::from_millis(10)
            });
            world.fault("message delay over".to_string());
        });
    }

    fn clock(&self) {
        let mut rng = thread_rng();
        let i = rng.gen_range(0..self.nodes.len());
        let node = self.nodes[i].id().to_string();
        let offset = if rng.gen_bool(0.5) {
            let o = rng.gen_range(-1_500..1_500);
            self.world
                .fault(format!("clock skew on n{}: {o:+} ms", i + 1));
            o
        } else {
            let jump = rng.gen_range(1_000..4_000) * if rng.gen_bool(0.5) { 1 } else { -1 };
            let o = (clock_offset(&node) + jump).clamp(-5_000, 5_000);
            self.world.fault(format!(
                "clock jump on n{}: {jump:+} ms (offset now {o:+} ms)",
                i + 1
            ));
            o
        };
        set_clock_offset(&node, offset);
        self.world.note_offset(offset);
    }

    fn pause(&self) {
        let (client, ms) = {
            let mut rng = thread_rng();
            (
                self.clients[rng.gen_range(0..self.clients.len())],
                rng.gen_range(
                    super::client::SESSION_TTL_MS + 500..3 * super::client::SESSION_TTL_MS,
                ),
            )
        };
        self.world.pause(client, now() + ms);
        self.world.fault(format!(
            "pause client {client} for {ms} ms (a GC pause, locks held)"
        ));
    }

    /// Ends every fault: links back, loss and delay off, nodes restarted,
    /// clients unpaused. Clock offsets stay (clocks do not heal).
    pub fn heal(&self) {
        let net = NetSim::current();
        for a in &self.nodes {
            for b in &self.nodes {
                net.unclog_link(a.id(), b.id());
            }
        }
        net.update_config(|c| {
            c.packet_loss_rate = 0.0;
            c.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
        });
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        for i in std::mem::take(&mut *down) {
            self.handle.restart(self.nodes[i].id());
        }
        *self.partitioned.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.world.unpause_all();
        self.world.fault("heal: every fault ended".to_string());
    }
}
