//! A simulated client: one session at a time, a random lock workload on a
//! few hot keys, writes to the fenced resource inside critical sections, and
//! a record of every operation (invocation, completion, outcome).
//!
//! Requests are retried with the same request id on another node until a
//! definite answer or a deadline; an operation that may have reached a
//! leader but got no answer is recorded as unknown, and the client then
//! abandons that session (it cannot know what it holds) and opens a new one.

use super::net::{call, Msg, Reply};
use super::{now, World, KEYS, RESOURCE_ADDR};
use crate::history::{Call, Op, Ret, WaitRecord, WaitResult};
use fencelock_core::{
    Command, FencingToken, LockError, LockKey, Mode, RequestId, Response, SessionId, WaitEnd,
};
use fencelock_raft::sim::timeout;
use fencelock_raft::wire::{ClientReply, ClientRpc, ReadAnswer, ReadQuery, WaitState};
use fencelock_raft::TransportError;
use madsim::rand::{thread_rng, Rng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Session TTL of every client.
pub const SESSION_TTL_MS: u64 = 3_000;
/// How long one operation is retried before its outcome is given up on.
const OP_DEADLINE_MS: u64 = 4_000;
/// One attempt's time limit.
const ATTEMPT: Duration = Duration::from_millis(800);

/// The outcome of one request: a definite answer, none (never applied), or
/// unknown (may have been applied).
enum Answer<T> {
    Definite(T),
    NotApplied,
    Unknown,
}

struct Session {
    id: SessionId,
    alive: Arc<AtomicBool>,
}

pub struct Client {
    id: u32,
    nodes: Vec<String>,
    leader: usize,
    /// Request ids: unique across clients (the core deduplicates
    /// session-less requests table-wide) and increasing per client.
    next_rid: Arc<std::sync::atomic::AtomicU64>,
    world: Arc<World>,
    session: Option<Session>,
    /// Whether the last [`Client::send`] answer followed an attempt that may
    /// have reached a node.
    retried: bool,
}

impl Client {
    pub fn new(id: u32, nodes: Vec<String>, world: Arc<World>) -> Client {
        Client {
            id,
            nodes,
            leader: 0,
            next_rid: Arc::new(std::sync::atomic::AtomicU64::new(u64::from(id) << 48)),
            world,
            session: None,
            retried: false,
        }
    }

    /// The client's life: work until the nemesis heals, then finish cleanly.
    pub async fn run(mut self, create_locks: bool) {
        if create_locks {
            for (key, kind, ttl) in super::lock_specs() {
                self.exec(Command::CreateLock {
                    key,
                    kind,
                    ttl_ms: ttl,
                })
                .await;
            }
        }
        while !self.world.stopping() {
            if self.session.is_none() && !self.open().await {
                madsim::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            self.step().await;
        }
        if let Some(s) = self.session.take() {
            s.alive.store(false, Ordering::SeqCst);
            self.exec(Command::CloseSession { session: s.id }).await;
        }
    }

    async fn open(&mut self) -> bool {
        let outcome = self
            .exec(Command::OpenSession {
                ttl_ms: SESSION_TTL_MS,
            })
            .await;
        let Some(Ok(Response::SessionOpened { session, .. })) = outcome else {
            return false;
        };
        let alive = Arc::new(AtomicBool::new(true));
        self.session = Some(Session {
            id: session,
            alive: alive.clone(),
        });
        let mut keeper = Client::new(self.id, self.nodes.clone(), self.world.clone());
        keeper.next_rid = self.next_rid.clone();
        madsim::task::spawn(keeper.keep_alive(session, alive));
        true
    }

    /// Sends keep-alives every third of the TTL while the session is in use
    /// and the client is not paused.
    async fn keep_alive(mut self, session: SessionId, alive: Arc<AtomicBool>) {
        loop {
            madsim::time::sleep(Duration::from_millis(SESSION_TTL_MS / 3)).await;
            if !alive.load(Ordering::SeqCst) {
                return;
            }
            if self.world.paused_until(self.id) > now() {
                continue;
            }
            if let Some(Err(LockError::SessionNotFound { .. })) =
                self.exec(Command::KeepAlive { session }).await
            {
                return;
            }
        }
    }

    fn sid(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Forgets the session (expired, or its state is unknown).
    fn abandon(&mut self) {
        if let Some(s) = self.session.take() {
            s.alive.store(false, Ordering::SeqCst);
        }
    }

    async fn step(&mut self) {
        let Some(session) = self.sid() else { return };
        let (key, modes) = {
            let mut rng = thread_rng();
            let (key, kind, _) = &super::lock_specs()[rng.gen_range(0..KEYS)];
            let mode = match kind {
                fencelock_core::LockKind::Exclusive => Mode::Exclusive,
                fencelock_core::LockKind::ReadWrite if rng.gen_bool(0.5) => Mode::Read,
                fencelock_core::LockKind::ReadWrite => Mode::Write,
            };
            (key.clone(), (mode, rng.gen_range(0..100u32)))
        };
        let (mode, dice) = modes;
        match dice {
            0..=79 => self.acquire(key, session, mode).await,
            80..=83 => {
                let r = self
                    .exec(Command::Steal {
                        key: key.clone(),
                        session,
                    })
                    .await;
                self.after_grant(key, session, r).await;
            }
            84..=86 => {
                self.exec(Command::ForceRelease { key }).await;
            }
            87..=88 => {
                // Let the session lapse: stop keep-alives, wait out the TTL.
                self.world
                    .fault(format!("client {} lets its session lapse", self.id));
                self.abandon();
                madsim::time::sleep(Duration::from_millis(SESSION_TTL_MS + 500)).await;
            }
            _ => {
                let ms = thread_rng().gen_range(10..300);
                madsim::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }

    async fn acquire(&mut self, key: LockKey, session: SessionId, mode: Mode) {
        let timeout_ms = {
            let mut rng = thread_rng();
            match rng.gen_range(0..10) {
                0..=2 => Some(0),
                3 => None,
                _ => Some(rng.gen_range(100..3_000)),
            }
        };
        let invoked_at = now();
        let command = Command::Acquire {
            key: key.clone(),
            session,
            mode,
            timeout_ms,
        };
        let r = self.exec(command).await;
        if let Some(Ok(Response::Queued { deadline, .. })) = &r {
            // State time; within the clock offsets of global time, which
            // the liveness bound dwarfs.
            let deadline = *deadline;
            let queued_at = now();
            let ended = self.await_wait(&key, session).await;
            self.world.record_wait(WaitRecord {
                client: self.id,
                key: key.clone(),
                session,
                mode,
                invoked_at,
                queued_at,
                deadline,
                ended,
                cancelled: false,
            });
            if let Some((_, WaitResult::Granted { token, .. })) = ended {
                self.critical(key, session, token).await;
            } else if ended.is_none() {
                self.abandon();
            }
            return;
        }
        self.after_grant(key, session, r).await;
    }

    async fn after_grant(
        &mut self,
        key: LockKey,
        session: SessionId,
        r: Option<Result<Response, LockError>>,
    ) {
        match r {
            Some(Ok(Response::Granted(g))) => self.critical(key, session, g.token).await,
            Some(Err(LockError::SessionNotFound { .. })) => self.abandon(),
            Some(_) => {}
            None => self.abandon(),
        }
    }

    /// Long-polls the end of a queued wait; records it as one operation.
    async fn await_wait(&mut self, key: &LockKey, session: SessionId) -> Option<(u64, WaitResult)> {
        let invoke = now();
        let give_up = invoke + super::LIVENESS_BOUND_MS + 10_000;
        while now() < give_up {
            let rpc = ClientRpc::Wait {
                key: key.clone(),
                session,
                max_wait_ms: 1_000,
            };
            let result = match self.send(rpc, Duration::from_millis(1_500)).await {
                Answer::Definite(ClientReply::Wait(state)) => match state {
                    WaitState::Waiting => continue,
                    WaitState::Granted(g) => WaitResult::Granted {
                        token: g.token,
                        mode: g.mode,
                        granted_at: g.granted_at,
                    },
                    WaitState::Ended(e) => WaitResult::Ended(e),
                    WaitState::NotWaiting => WaitResult::Ended(WaitEnd::SessionEnded),
                },
                _ => {
                    madsim::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let at = now();
            self.world.record_op(Op {
                client: self.id,
                invoke,
                complete: Some(at),
                call: Call::WaitResult {
                    key: key.clone(),
                    session,
                },
                ret: Ret::Wait(result),
                retried: false,
            });
            return Some((at, result));
        }
        None
    }

    /// Holds the lock: writes to the fenced resource (validating first now
    /// and then), maybe pauses (the nemesis's GC pause), maybe extends, and
    /// releases.
    async fn critical(&mut self, key: LockKey, session: SessionId, token: FencingToken) {
        let writes = thread_rng().gen_range(1..4);
        for _ in 0..writes {
            let pause = self.world.paused_until(self.id);
            if pause > now() {
                madsim::time::sleep(Duration::from_millis(pause - now())).await;
            }
            if thread_rng().gen_bool(0.5) && !self.validate(&key, token).await {
                break;
            }
            let _ = call(
                RESOURCE_ADDR,
                Msg::Write(self.id, key.clone(), token),
                Duration::from_millis(500),
            )
            .await
            .map(|r| matches!(r, Reply::Written(true)));
            let ms = thread_rng().gen_range(10..200);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            if thread_rng().gen_bool(0.2) {
                let r = self
                    .exec(Command::Extend {
                        key: key.clone(),
                        session,
                        token,
                    })
                    .await;
                if r.as_ref().is_none_or(|r| r.is_err()) {
                    break;
                }
            }
            if self.world.stopping() {
                break;
            }
        }
        let r = self
            .exec(Command::Release {
                key,
                session,
                token,
            })
            .await;
        if r.is_none() {
            self.abandon();
        }
    }

    /// A linearizable validate; recorded only when answered (reads change nothing).
    async fn validate(&mut self, key: &LockKey, token: FencingToken) -> bool {
        let invoke = now();
        let rpc = ClientRpc::Read(ReadQuery::Validate {
            key: key.clone(),
            token,
        });
        // With the stale-read bug planted, any node answers: ask a random one.
        if self.world.stale_reads {
            self.leader = thread_rng().gen_range(0..self.nodes.len());
        }
        let Answer::Definite(ClientReply::Read(ReadAnswer::Validated(r))) =
            self.send(rpc, ATTEMPT).await
        else {
            return false;
        };
        let ok = r.is_ok();
        self.world.record_op(Op {
            client: self.id,
            invoke,
            complete: Some(now()),
            call: Call::Validate {
                key: key.clone(),
                token,
            },
            ret: Ret::Validate(r.map(|_| ())),
            retried: false,
        });
        ok
    }

    /// Executes a command with retries; records it. `None`: unknown outcome.
    async fn exec(&mut self, command: Command) -> Option<Result<Response, LockError>> {
        let request_id = Some(RequestId(self.next_rid.fetch_add(1, Ordering::SeqCst) + 1));
        let invoke = now();
        let rpc = ClientRpc::Execute {
            request_id,
            command: command.clone(),
        };
        let answer = self.send(rpc, ATTEMPT).await;
        let (complete, ret, result) = match answer {
            Answer::Definite(ClientReply::Outcome(o)) => {
                (Some(now()), Ret::Exec(o.clone()), Some(o))
            }
            Answer::NotApplied => return None,
            _ => (None, Ret::Unknown, None),
        };
        self.world.record_op(Op {
            client: self.id,
            invoke,
            complete,
            call: Call::Exec {
                request_id,
                command,
            },
            ret,
            retried: self.retried,
        });
        result
    }

    /// Sends `rpc` to the leader (as far as the client knows it), following
    /// redirects and retrying elsewhere until a definite answer or the deadline.
    async fn send(&mut self, rpc: ClientRpc, attempt: Duration) -> Answer<ClientReply> {
        let deadline = now() + OP_DEADLINE_MS;
        let mut maybe_applied = false;
        self.retried = false;
        let read_only = matches!(rpc, ClientRpc::Read(_) | ClientRpc::Wait { .. });
        while now() < deadline {
            let addr = self.nodes[self.leader % self.nodes.len()].clone();
            let r = timeout(attempt + Duration::from_millis(100), async {
                super::net::call(&addr, Msg::Client(rpc.clone()), attempt).await
            })
            .await
            .unwrap_or(Err(TransportError::Timeout {
                addr: addr.clone(),
                ms: attempt.as_millis() as u64,
            }));
            match r {
                Ok(Reply::Client(ClientReply::NotLeader { leader, .. })) => {
                    // A leader that lost its office answers its pending
                    // proposals "not leader", yet they may still commit.
                    maybe_applied = true;
                    match leader {
                        Some(l) if (l as usize) <= self.nodes.len() && l > 0 => {
                            self.leader = l as usize - 1
                        }
                        _ => self.leader += 1,
                    }
                    madsim::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Reply::Client(ClientReply::Unavailable(_))) => {
                    maybe_applied = true;
                    self.leader += 1;
                    madsim::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Reply::Client(reply)) => {
                    self.retried = maybe_applied;
                    return Answer::Definite(reply);
                }
                Ok(_) => maybe_applied = true,
                Err(e) => {
                    maybe_applied |= !e.not_delivered();
                    self.leader += 1;
                    madsim::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if maybe_applied && !read_only {
            Answer::Unknown
        } else {
            Answer::NotApplied
        }
    }
}
