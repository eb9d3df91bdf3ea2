//! The write-ahead file under the Raft log: framed records, one writer thread,
//! group commit.
//!
//! Every record is `[len: u32 LE][crc32: u32 LE][postcard payload]`. Replay
//! stops at the first short or corrupt record and cuts the file there: that is
//! the torn tail of a write that was never acknowledged (acknowledgement
//! happens only after `fdatasync`).
//!
//! One OS thread owns the file. It takes every request queued so far, writes
//! them with one `write`, calls `fdatasync` once, and only then completes them
//! all (group commit): under load, many Raft appends and vote saves share one
//! disk flush, and writes reach the disk in the order they were queued, which
//! is what openraft requires of log and vote I/O.
//!
//! With fsync on, the file is grown ahead of the records in zero-filled
//! steps of [`PREALLOCATE`] bytes: a record then overwrites zeros inside the
//! file instead of extending it, so its `fdatasync` flushes data only, not
//! the file size through the filesystem journal (measured on the dev VM:
//! 105–114 → 77–88 µs per small write + fdatasync, and less CPU). A zero
//! header ends the log on replay (no record is empty), and replay cuts
//! everything after the last intact record, so the writer always continues
//! right after it.

use crate::fsync_waker::{FsyncPoll, FsyncRunner};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const HEADER: usize = 8;
/// How far ahead of the records the file is zero-filled (fsync on only).
pub const PREALLOCATE: u64 = 2 << 20;
/// Largest record accepted on replay; anything larger is treated as corruption.
const MAX_RECORD: usize = 1 << 30;

/// Called once the bytes it was queued with are durable (or failed).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Op {
    Append {
        bytes: Vec<u8>,
        done: Option<Done>,
    },
    /// Replace the whole file with `bytes` (compaction), atomically.
    Rewrite {
        bytes: Vec<u8>,
        done: Option<Done>,
    },
}

/// Appends framed records to the file from a dedicated thread. Dropping it
/// waits until everything queued is written, so a node restarted in the same
/// process never replays a file that an old writer is still appending to.
pub struct WalWriter {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frames one record.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits framed bytes into intact records; also returns how many bytes they
/// cover (anything after is a torn or corrupt tail, or preallocated zeros).
pub fn parse(data: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let start = at + HEADER;
        // Zero length: the preallocated zeros after the last record (an
        // empty payload would pass the CRC check, but none is ever written).
        if len == 0 || len > MAX_RECORD || data.len() - start < len {
            break;
        }
        let payload = &data[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        at = start + len;
    }
    (records, at)
}

/// Reads every intact record and cuts a torn or corrupt tail off the file.
pub fn replay(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let (records, at) = parse(&data);
    cut_after(path, &data, at)?;
    Ok(records)
}

/// Cuts the file after its last intact record (at `at` of `data`, its
/// contents): a torn tail, or preallocated zeros the writer will grow again.
fn cut_after(path: &Path, data: &[u8], at: usize) -> io::Result<()> {
    if at < data.len() {
        if data[at..].iter().any(|b| *b != 0) {
            tracing::warn!(
                path = %path.display(),
                kept = at,
                dropped = data.len() - at,
                "cutting a torn tail off the log file"
            );
        }
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(at as u64)?;
        f.sync_all()?;
    }
    Ok(())
}

/// Where appends continue in the file at `path`: right after its last intact
/// record (anything after it is cut first).
fn logical_end(path: &Path) -> io::Result<u64> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let (_, at) = parse(&data);
    cut_after(path, &data, at)?;
    Ok(at as u64)
}

/// The open file and where its records end.
struct Tail {
    file: File,
    /// The end of the last record: the next write goes here.
    end: u64,
    /// The file's length (zero-filled beyond `end`).
    len: u64,
}

/// Where the log store's framed records go. [`WalWriter`] is the file; a
/// simulator supplies its own (e.g. one that loses unflushed bytes on a
/// simulated crash), or uses [`MemDisk`].
pub trait LogSink: Send + Sync + 'static {
    /// Appends framed bytes; `done` runs once they are durable.
    fn append(&self, bytes: Vec<u8>, done: Option<Done>);
    /// Replaces everything with `bytes` (compaction); `done` as above.
    fn rewrite(&self, bytes: Vec<u8>, done: Option<Done>);
}

impl LogSink for WalWriter {
    fn append(&self, bytes: Vec<u8>, done: Option<Done>) {
        WalWriter::append(self, bytes, done)
    }

    fn rewrite(&self, bytes: Vec<u8>, done: Option<Done>) {
        WalWriter::rewrite(self, bytes, done)
    }
}

/// An in-memory "disk" on which every write is durable at once. Keep it
/// across a node restart and reopen the log with
/// [`crate::log_store::LogStore::on_sink`] from [`MemDisk::contents`].
#[derive(Debug, Default)]
pub struct MemDisk {
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl MemDisk {
    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl LogSink for MemDisk {
    fn append(&self, bytes: Vec<u8>, done: Option<Done>) {
        self.bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(&bytes);
        if let Some(done) = done {
            done(Ok(()));
        }
    }

    fn rewrite(&self, bytes: Vec<u8>, done: Option<Done>) {
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
        if let Some(done) = done {
            done(Ok(()));
        }
    }
}

impl WalWriter {
    /// Opens `path` for appending and starts the writer thread. With `fsync`
    /// off, writes are acknowledged once in the page cache (benchmarks only:
    /// a machine crash may then lose acknowledged entries).
    pub fn open(path: &Path, fsync: bool) -> io::Result<WalWriter> {
        Self::open_with(path, fsync, FsyncPoll::Off)
    }

    /// Like [`WalWriter::open`], running each fsync under `poll` (see
    /// [`crate::fsync_waker`]).
    pub fn open_with(path: &Path, fsync: bool, poll: FsyncPoll) -> io::Result<WalWriter> {
        let runner = FsyncRunner::start(if fsync { poll } else { FsyncPoll::Off })?;
        let end = logical_end(path)?;
        let file = (OpenOptions::new().create(true).write(true))
            .truncate(false)
            .open(path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        let tail = Tail {
            file,
            end,
            len: end,
        };
        let (tx, rx) = mpsc::channel::<Op>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("fencelock-wal".into())
            .spawn(move || writer_loop(tail, path, fsync, runner, rx))?;
        Ok(WalWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues framed bytes; `done` runs once they are durable.
    pub fn append(&self, bytes: Vec<u8>, done: Option<Done>) {
        self.send(Op::Append { bytes, done });
    }

    /// Queues a replacement of the whole file by `bytes` (already framed).
    pub fn rewrite(&self, bytes: Vec<u8>, done: Option<Done>) {
        self.send(Op::Rewrite { bytes, done });
    }

    fn send(&self, op: Op) {
        let sent = match &self.tx {
            Some(tx) => tx.send(op),
            None => Err(mpsc::SendError(op)),
        };
        if let Err(mpsc::SendError(op)) = sent {
            let done = match op {
                Op::Append { done, .. } | Op::Rewrite { done, .. } => done,
            };
            if let Some(done) = done {
                done(Err(io::Error::other("the log writer thread has stopped")));
            }
        }
    }
}

fn writer_loop(
    mut tail: Tail,
    path: PathBuf,
    fsync: bool,
    mut runner: FsyncRunner,
    rx: mpsc::Receiver<Op>,
) {
    let mut write = |tail: &mut Tail, buf: &mut Vec<u8>, sync: bool| {
        flush(tail, buf, sync.then_some(&mut runner), fsync)
    };
    let mut pending: Vec<Done> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut result: io::Result<()> = Ok(());
        // Take everything queued so far; a rewrite flushes what came before it.
        while let Some(op) = next.take() {
            match op {
                Op::Append { bytes, done } => {
                    buf.extend_from_slice(&bytes);
                    pending.extend(done);
                }
                Op::Rewrite { bytes, done } => {
                    result = result.and_then(|_| write(&mut tail, &mut buf, fsync));
                    result = result.and_then(|_| {
                        let end = bytes.len() as u64;
                        tail = Tail {
                            file: replace_file(&path, &bytes)?,
                            end,
                            len: end,
                        };
                        Ok(())
                    });
                    pending.extend(done);
                }
            }
            next = rx.try_recv().ok();
        }
        // Records nobody waits for (commit hints, truncations, purges) are
        // written but not synced on their own: they become durable with the
        // next synced write, which keeps a commit hint from costing a whole
        // extra flush in front of the next append.
        let sync = fsync && !pending.is_empty();
        result = result.and_then(|_| write(&mut tail, &mut buf, sync));
        buf.clear();
        let failed = result.as_ref().err().map(|e| (e.kind(), e.to_string()));
        for done in pending.drain(..) {
            done(match &failed {
                None => Ok(()),
                Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            });
        }
        if let Some((_, msg)) = failed {
            // A log that cannot be written must not acknowledge anything again.
            tracing::error!(path = %path.display(), "log write failed, writer stops: {msg}");
            for op in rx.iter() {
                if let Op::Append { done: Some(d), .. } | Op::Rewrite { done: Some(d), .. } = op {
                    d(Err(io::Error::other(format!(
                        "log write failed earlier: {msg}"
                    ))));
                }
            }
            return;
        }
    }
}

/// Writes `buf` after the last record (growing the zero-filled area first
/// when `preallocate` and it is too short), then syncs through `sync` if
/// given.
fn flush(
    tail: &mut Tail,
    buf: &mut Vec<u8>,
    sync: Option<&mut FsyncRunner>,
    preallocate: bool,
) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let end = tail.end + buf.len() as u64;
    if preallocate && end > tail.len {
        // Zeros now; the sync below makes them durable with the records.
        let to = end + PREALLOCATE;
        let zeros = vec![0u8; 256 << 10];
        while tail.len < to {
            let n = (to - tail.len).min(zeros.len() as u64);
            tail.file.write_all_at(&zeros[..n as usize], tail.len)?;
            tail.len += n;
        }
    }
    tail.file.write_all_at(buf, tail.end)?;
    tail.end = end;
    tail.len = tail.len.max(end);
    buf.clear();
    match sync {
        Some(runner) => runner.run(|| tail.file.sync_data()),
        None => Ok(()),
    }
}

fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let tmp = path.with_extension("compact");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    OpenOptions::new().write(true).open(path)
}

/// Makes a rename or file creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn append_sync(w: &WalWriter, payload: &[u8]) {
        let mut bytes = Vec::new();
        frame(payload, &mut bytes);
        let (tx, rx) = mpsc::channel();
        w.append(bytes, Some(Box::new(move |r| tx.send(r).unwrap())));
        rx.recv().unwrap().unwrap();
    }

    #[test]
    fn replay_returns_records_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        // Without fsync nothing is preallocated, so the torn header below is
        // the file's last bytes (after zeros it would stop at the zeros).
        let w = WalWriter::open(&path, false).unwrap();
        append_sync(&w, b"one");
        append_sync(&w, b"two");
        drop(w);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * HEADER as u64 + 6
        );
        // A torn write: a header promising more bytes than exist.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2, 3, 4, b'x']).unwrap();
        drop(f);
        assert_eq!(
            replay(&path).unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        // The tail was cut, so a new append follows the last good record.
        let w = WalWriter::open(&path, true).unwrap();
        append_sync(&w, b"three");
        assert_eq!(replay(&path).unwrap().len(), 3);
    }

    #[test]
    fn records_fill_preallocated_zeros_and_appends_continue_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let w = WalWriter::open(&path, true).unwrap();
        append_sync(&w, b"one");
        append_sync(&w, b"two");
        drop(w);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len >= PREALLOCATE, "not preallocated: {len} bytes");
        // A writer opened on it (no replay first) continues after "two",
        // not after the zeros.
        let w = WalWriter::open(&path, true).unwrap();
        append_sync(&w, b"three");
        drop(w);
        assert_eq!(
            replay(&path).unwrap(),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        // A torn write inside the zeros is cut like any torn tail.
        let end = 3 * HEADER as u64 + 11;
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[9, 0, 0, 0, 1, 2, 3, 4, b'x'], end)
            .unwrap();
        drop(f);
        assert_eq!(replay(&path).unwrap().len(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        let w = WalWriter::open(&path, true).unwrap();
        append_sync(&w, b"four");
        drop(w);
        assert_eq!(replay(&path).unwrap().len(), 4);
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let w = WalWriter::open(&path, false).unwrap();
        append_sync(&w, b"good");
        append_sync(&w, b"flipped");
        drop(w);
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(replay(&path).unwrap(), vec![b"good".to_vec()]);
    }

    #[test]
    fn rewrite_replaces_the_file_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let w = WalWriter::open(&path, true).unwrap();
        append_sync(&w, b"old");
        let mut bytes = Vec::new();
        frame(b"compacted", &mut bytes);
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        w.rewrite(
            bytes,
            Some(Box::new(move |r| o.lock().unwrap().push(r.is_ok()))),
        );
        append_sync(&w, b"new");
        assert_eq!(*order.lock().unwrap(), vec![true]);
        assert_eq!(
            replay(&path).unwrap(),
            vec![b"compacted".to_vec(), b"new".to_vec()]
        );
    }
}
