//! The position file's writer thread. A save is two fsyncs, and on a busy disk (the node's
//! other pods, etcd beside the apiserver) one fsync took up to 256 ms here: on the event loop
//! that stalled reading, sending and acks alike, and delivery latency went from under 1 ms to
//! 260 ms at the 99th percentile. The loop hands the newest acked position over and goes on;
//! the thread writes it with [`Store::save`] and wakes the loop, which collects the outcome
//! on its next turn (logging and the metrics stay on the loop).
//!
//! One save is in flight at a time: positions only move forward, so while one is written the
//! loop just waits to hand over the newest; the file is behind by the save in flight and the
//! flush interval, or, if the disk hangs, by everything since (the loop warns: `busy_since`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::offsets::{Position, Store};

/// What the loop asked for and what became of it, shared with the thread.
#[derive(Default)]
struct Slot {
    /// Handed over, not yet taken by the thread.
    job: Option<Position>,
    /// Written (or not): waiting to be collected.
    done: Option<(Position, io::Result<()>)>,
    /// The saver is gone: the thread ends.
    stop: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    /// Signalled when a job or a stop arrives, and when a save is done.
    changed: Condvar,
}

impl Shared {
    /// The slot, also after a panic elsewhere held the lock: it holds plain data that every
    /// step leaves consistent.
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The loop's side of the writer thread, and its view of what the file holds.
pub struct Saver {
    shared: Arc<Shared>,
    path: PathBuf,
    /// What the file holds as far as the loop knows: loaded at start-up or written since.
    saved: Option<Position>,
    /// Handed over and not yet collected, and since when.
    in_flight: Option<(Position, Instant)>,
}

/// A finished save, for the loop to count and log.
pub struct Outcome {
    pub position: Position,
    pub result: io::Result<()>,
}

impl Saver {
    /// Starts the thread, which writes through `store`; `wake` is called after each save.
    pub fn start(store: Store, wake: impl Fn() + Send + 'static) -> io::Result<Saver> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            changed: Condvar::new(),
        });
        let path = store.path().to_path_buf();
        let saved = store.last().cloned();
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("position".into())
            .spawn(move || write_loop(&theirs, store, wake))?;
        Ok(Saver {
            shared,
            path,
            saved,
            in_flight: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file holds as far as the loop knows.
    pub fn saved(&self) -> Option<&Position> {
        self.saved.as_ref()
    }

    /// Whether no position was ever loaded or written: a fresh start.
    pub fn is_empty(&self) -> bool {
        self.saved.is_none()
    }

    /// Whether a save is being written.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Since when the save being written was handed over: a disk that hangs shows here, while
    /// delivery goes on and the file falls behind.
    pub fn busy_since(&self) -> Option<Instant> {
        self.in_flight.as_ref().map(|(_, t)| *t)
    }

    /// Hands `p` to the thread unless a save is in flight; returns whether it did.
    pub fn offer(&mut self, p: &Position) -> bool {
        if self.busy() {
            return false;
        }
        self.in_flight = Some((p.clone(), Instant::now()));
        self.shared.lock().job = Some(p.clone());
        self.shared.changed.notify_all();
        true
    }

    /// The save that finished since the last call, if any.
    pub fn collect(&mut self) -> Option<Outcome> {
        let done = self.shared.lock().done.take();
        done.map(|d| self.finished(d))
    }

    /// Waits for the save in flight, if any, to finish (start-up's first save and the last
    /// one at a stop, which must be in the file before the loop goes on), at most until
    /// `until`. `None` if nothing was in flight or the time ran out first ([`Saver::busy`]
    /// tells which).
    pub fn wait(&mut self, until: Option<Instant>) -> Option<Outcome> {
        self.in_flight.as_ref()?;
        let mut slot = self.shared.lock();
        loop {
            if let Some(d) = slot.done.take() {
                drop(slot);
                return Some(self.finished(d));
            }
            let changed = &self.shared.changed;
            slot = match until {
                None => changed.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    match changed.wait_timeout(slot, left) {
                        Ok((s, _)) => s,
                        Err(e) => e.into_inner().0,
                    }
                }
            };
        }
    }

    fn finished(&mut self, (position, result): (Position, io::Result<()>)) -> Outcome {
        self.in_flight = None;
        if result.is_ok() {
            self.saved = Some(position.clone());
        }
        Outcome { position, result }
    }
}

impl Drop for Saver {
    /// Ends the thread after the save it is writing, if any; nobody waits for it: a write cut
    /// short by the process exiting leaves the old position (the rename is atomic).
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

fn write_loop(shared: &Shared, mut store: Store, wake: impl Fn()) {
    loop {
        let job = {
            let mut slot = shared.lock();
            loop {
                if slot.stop {
                    return;
                }
                if let Some(job) = slot.job.take() {
                    break job;
                }
                slot = shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = store.save(&job);
        shared.lock().done = Some((job, result));
        shared.changed.notify_all();
        wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::offsets::{self, FileId, Fingerprint};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn position(offset: u64) -> Position {
        Position {
            id: FileId {
                dev: 1,
                ino: 2,
                fp: Fingerprint::of(&[7u8; 300]),
            },
            offset,
            done: false,
            name: "audit.log".into(),
        }
    }

    /// A new empty directory for one test, and the position file's path in it.
    fn empty_dir(label: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pos");
        (dir, path)
    }

    #[test]
    fn saves_in_the_background_and_reports_each_outcome() {
        let (dir, path) = empty_dir("af-saver");
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = wakes.clone();
        let mut saver = Saver::start(Store::new(path.clone(), None), move || {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        assert!(saver.is_empty());
        assert_eq!(saver.saved(), None);

        assert!(saver.offer(&position(10)));
        // One in flight at a time: the next waits for it.
        assert!(!saver.offer(&position(20)));
        let done = saver.wait(None).expect("a save was in flight");
        assert_eq!(done.position, position(10));
        assert!(done.result.is_ok());
        assert_eq!(saver.saved(), Some(&position(10)));
        assert_eq!(offsets::load(&path).unwrap(), Some(position(10)));
        // The thread wakes the loop just after it hands the outcome over, so `wait` may return
        // first: the wake-up is waited for (seconds at most), not expected at once.
        let since = std::time::Instant::now();
        while wakes.load(Ordering::SeqCst) == 0 && since.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(wakes.load(Ordering::SeqCst), 1);

        assert!(saver.offer(&position(20)));
        let done = loop {
            if let Some(d) = saver.collect() {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(done.position, position(20));
        assert_eq!(offsets::load(&path).unwrap(), Some(position(20)));
        assert!(saver.wait(None).is_none(), "nothing in flight");

        // A failed write is reported and leaves the position unsaved, so it is offered again.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(saver.offer(&position(30)));
        let done = saver.wait(None).unwrap();
        assert!(done.result.is_err());
        assert_eq!(saver.saved(), Some(&position(20)));
        assert!(!saver.busy());
        assert!(saver.offer(&position(30)));
        assert!(saver.wait(None).unwrap().result.is_err());
    }

    #[test]
    fn a_loaded_position_counts_as_saved() {
        let path = std::env::temp_dir().join(format!("af-saver-loaded-{}", std::process::id()));
        let saver = Saver::start(Store::new(path, Some(position(5))), || {}).unwrap();
        assert!(!saver.is_empty());
        assert_eq!(saver.saved(), Some(&position(5)));
        assert!(!saver.busy());
    }

    #[test]
    fn a_save_that_hangs_is_waited_for_only_until_the_deadline() {
        let (dir, path) = empty_dir("af-saver-fifo");
        // A FIFO where the temp file goes: opening it to write blocks until a reader comes, as
        // an fsync on a hung disk would.
        let tmp = std::ffi::CString::new(dir.join("pos.tmp").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: `tmp` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(tmp.as_ptr(), 0o600) }, 0);
        let mut saver = Saver::start(Store::new(path.clone(), None), || {}).unwrap();
        assert!(saver.offer(&position(10)));
        let until = Instant::now() + std::time::Duration::from_millis(200);
        assert!(saver.wait(Some(until)).is_none());
        assert!(Instant::now() >= until);
        assert!(saver.busy(), "still in flight");
        assert!(saver.collect().is_none());
        assert!(!saver.offer(&position(20)));
        // A reader lets the open go on; a FIFO cannot be fsynced, so that save fails, and the
        // next one, with the FIFO gone, writes the file.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("pos.tmp"))
            .unwrap();
        let done = saver.wait(None).unwrap();
        assert!(done.result.is_err());
        std::fs::remove_file(dir.join("pos.tmp")).unwrap();
        assert!(saver.offer(&position(20)));
        assert!(saver.wait(None).unwrap().result.is_ok());
        assert_eq!(offsets::load(&path).unwrap(), Some(position(20)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
