//! What a simulation run records, and what the checkers read.
//!
//! Times are milliseconds of simulated global time. Each client operation is
//! recorded from its invocation to its completion; an operation whose answer
//! never came (the request may or may not have been applied) has no
//! completion and an [`Ret::Unknown`] result, as in Jepsen and Porcupine.

use fencelock_core::{
    Command, FencingToken, LockError, LockKey, Millis, Mode, RequestId, Response, SessionId,
    WaitEnd,
};
use serde::{Deserialize, Serialize};

/// A simulated client (one session at a time).
pub type ClientId = u32;

/// What a client asked the lock service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// A mutating command (retried internally with the same request id).
    Exec {
        request_id: Option<RequestId>,
        command: Command,
    },
    /// A linearizable `validate(key, token)`.
    Validate { key: LockKey, token: FencingToken },
    /// How the session's queued wait for `key` ended (long-polled).
    WaitResult { key: LockKey, session: SessionId },
}

/// How a queued wait ended, as the client learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitResult {
    /// `granted_at` is the state time of the grant: it pins when the
    /// operation that freed the lock took effect (a lease runs from it).
    Granted {
        token: FencingToken,
        mode: Mode,
        granted_at: Millis,
    },
    Ended(WaitEnd),
}

/// What the client got back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Exec(Result<Response, LockError>),
    /// `Ok(())`: the token was a current hold.
    Validate(Result<(), LockError>),
    Wait(WaitResult),
    /// No answer: the operation may or may not have taken effect.
    Unknown,
}

/// One client operation, invocation to completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: ClientId,
    pub invoke: Millis,
    /// `None` with [`Ret::Unknown`]: never answered.
    pub complete: Option<Millis>,
    pub call: Call,
    pub ret: Ret,
    /// The answer came after an earlier attempt may have reached a node: a
    /// session's request memory ends with the session, so such a retry can
    /// be answered `SessionNotFound` although an earlier attempt applied.
    #[serde(default)]
    pub retried: bool,
}

impl Op {
    /// The lock key this operation is about, if any.
    pub fn key(&self) -> Option<&LockKey> {
        match &self.call {
            Call::Validate { key, .. } | Call::WaitResult { key, .. } => Some(key),
            Call::Exec { command, .. } => command_key(command),
        }
    }

    /// The session this operation acts for, if any (for `OpenSession`: the
    /// session it opened, when known).
    pub fn session(&self) -> Option<SessionId> {
        match &self.call {
            Call::WaitResult { session, .. } => Some(*session),
            Call::Validate { .. } => None,
            Call::Exec { command, .. } => command.session().or(match &self.ret {
                Ret::Exec(Ok(Response::SessionOpened { session, .. })) => Some(*session),
                _ => None,
            }),
        }
    }
}

/// The key a command names.
pub fn command_key(command: &Command) -> Option<&LockKey> {
    match command {
        Command::CreateLock { key, .. }
        | Command::Acquire { key, .. }
        | Command::CancelWait { key, .. }
        | Command::Release { key, .. }
        | Command::Extend { key, .. }
        | Command::Steal { key, .. }
        | Command::ForceRelease { key }
        | Command::Destroy { key } => Some(key),
        Command::OpenSession { .. }
        | Command::KeepAlive { .. }
        | Command::CloseSession { .. }
        | Command::Tick => None,
    }
}

/// One request that reached the fenced resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Simulated time at the resource.
    pub at: Millis,
    pub client: ClientId,
    /// The resource is partitioned by lock key: one register per key.
    pub key: LockKey,
    pub token: FencingToken,
    /// The resource's verdict: token at least the highest it had seen.
    pub accepted: bool,
}

/// A wait the service queued, and how (and when) the client learned its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRecord {
    pub client: ClientId,
    pub key: LockKey,
    pub session: SessionId,
    pub mode: Mode,
    /// When the client sent the `acquire` that was queued.
    pub invoked_at: Millis,
    /// When the `Queued` answer arrived.
    pub queued_at: Millis,
    /// The wait's own deadline in simulated global time, if it has one.
    pub deadline: Option<Millis>,
    /// When the client learned the end, and what it was; `None`: never.
    pub ended: Option<(Millis, WaitResult)>,
    /// The client cancelled the wait (or gave up polling on purpose).
    pub cancelled: bool,
}

/// One replica's final state, for the agreement check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub node: u64,
    pub applied_index: u64,
    pub table: Vec<u8>,
}

/// Everything one run recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
    pub accesses: Vec<Access>,
    pub waits: Vec<WaitRecord>,
    /// How far any node's clock was behind / ahead of global time (ms), over
    /// the whole run: state time at an operation lies within its real-time
    /// interval widened by these.
    pub clock_behind: Millis,
    pub clock_ahead: Millis,
    /// The fail-over graces new leaders applied (their stamped state times,
    /// ascending): internal transitions the model must be able to take.
    pub graces: Vec<Millis>,
    /// When the nemesis healed every fault (end of the fault phase).
    pub healed_at: Option<Millis>,
    /// Replica states at the end (after healing and catching up).
    pub replicas: Vec<ReplicaState>,
}
