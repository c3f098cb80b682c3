//! File identity and the position file. The position says which file (device, inode and a
//! fingerprint of its first bytes) and which offset in it every byte before has been acked. It is
//! written atomically (temp file, fsync, rename, fsync of the directory) so a crash leaves either
//! the old or the new position, never a torn one.
//!
//! # The rules of file identity
//! Every decision "is this the file we knew?" is made here, by the functions named below, so
//! `tail` only lists, opens and reads. Each rule has a table test.
//!
//! 1. **Only a strong fingerprint identifies a file** ([`Fingerprint::is_strong`]): the hash of
//!    its first [`FINGERPRINT_BYTES`] bytes. kube-apiserver starts every line with a unique
//!    auditID and timestamp, so two audit files never share them. A file shorter than that when
//!    we looked has a *weak* fingerprint, which identifies nothing (an empty one matches every
//!    file).
//! 2. **An inode identifies a file only while we hold it open** ([`held_open`]): lumberjack
//!    deletes old backups and the kernel hands their inode numbers to new files at once, but not
//!    while a descriptor keeps the old file alive. A position never relies on the inode.
//! 3. **A saved position is strong** ([`committable`]): while the file being read still has a
//!    weak fingerprint (typically a freshly rotated, still empty `audit.log`), the position
//!    stays at the end of the last finished file that had a strong one (marked `done`). Only
//!    when no such file ever existed is a weak position saved.
//! 4. **Start-up places a strong position by content alone** ([`place`]): the oldest entry of
//!    the rotation set whose first bytes hash to it (a plain backup sorts before its gzip copy),
//!    at the saved offset; every newer entry follows.
//! 5. **Ambiguity re-reads, it never skips** ([`place`]): a weak position re-reads from offset 0
//!    of the *oldest* entry that starts with its bytes; a position whose file is gone, or a
//!    position file that cannot be read ([`Position::unknown`]), re-reads every remaining
//!    file. Duplicates are the price; the log says why, and says "lost" only when data past
//!    the offset may really be gone (the file was not finished).
//! 6. **Only strong fingerprints remember finished files** ([`suppresses`]): a weak one would
//!    hide a new file that happens to start with the same few bytes.
//! 7. **While following, a new entry is newer than what we hold when it lists after the newest
//!    held file**, found by inode (rule 2) or, once that file was gzipped, by its bytes
//!    ([`head_matches`]; the oldest match, since placing it too early only costs duplicates).
//!    This applies rules 1 and 2 in `tail`'s rescan; its tests are the rotation tests there and
//!    in `tests/rotation.rs`. A file left out of a listing is never newer again, so `tail` acts
//!    only on a listing no rotation changed until the files it names were opened (rule 2: a
//!    name stat'ed but not yet opened may meanwhile be a newer file with the same inode).

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// How many leading bytes identify a file. Audit lines start with a unique auditID and a
/// timestamp well within this, so two different logs never share it.
pub const FINGERPRINT_BYTES: usize = 256;

/// A hash of the first `len` bytes of a file. Inodes alone lie: lumberjack deletes old backups and
/// the kernel hands their inode numbers to new files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let bytes = &bytes[..bytes.len().min(FINGERPRINT_BYTES)];
        // FNV-1a: tiny, and collisions only matter between files of one directory.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Fingerprint {
            len: bytes.len() as u32,
            hash: h,
        }
    }

    /// Reads up to the fingerprint size from `r` (a file at offset 0 or a gzip decoder).
    pub fn read_from(mut r: impl Read) -> io::Result<Fingerprint> {
        let mut buf = [0u8; FINGERPRINT_BYTES];
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Fingerprint::of(&buf[..n]))
    }

    /// An empty file has no identity beyond its inode.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rule 1: covers the full [`FINGERPRINT_BYTES`], so it names one file on its own.
    pub fn is_strong(&self) -> bool {
        self.len as usize == FINGERPRINT_BYTES
    }
}

/// Rule 1: whether a file starting with `head` (its first bytes, up to [`FINGERPRINT_BYTES`])
/// starts with the bytes `fp` was taken of. A head shorter than the fingerprint never matches.
pub fn head_matches(head: &[u8], fp: &Fingerprint) -> bool {
    let len = fp.len as usize;
    head.len() >= len && Fingerprint::of(&head[..len]) == *fp
}

/// Rule 2: a directory entry (dev, inode) is a file we hold open.
pub fn held_open(held: &FileId, dev: u64, ino: u64) -> bool {
    held.dev == dev && held.ino == ino
}

/// Rule 3: the position to save for `current` (where reading stands) given `anchor`, the end of
/// the last finished file with a strong fingerprint.
pub fn committable(current: Position, anchor: Option<&Position>) -> Position {
    match anchor {
        Some(a) if !current.id.fp.is_strong() => a.clone(),
        _ => current,
    }
}

/// Rule 6: whether the fingerprint of a finished file hides `candidate` as already read.
pub fn suppresses(finished: &Fingerprint, candidate: &Fingerprint) -> bool {
    finished.is_strong() && finished == candidate
}

/// Where start-up begins reading, from [`place`].
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Entry `index` at `offset`, then every newer entry.
    Resume { index: usize, offset: u64 },
    /// Entry `index` from offset 0, then every newer entry; `why` is for the log and `lost`
    /// says whether data may really be gone (an ERROR) or only sent twice (a WARN).
    Reread {
        index: usize,
        why: String,
        lost: bool,
    },
}

/// Rules 4 and 5: places `p` among the rotation set's `heads` (each entry's first bytes, up to
/// [`FINGERPRINT_BYTES`], oldest entry first; `None` when it cannot be read) in directory `dir`
/// (for the explanation). An empty set yields `Reread { index: 0 }`.
pub fn place(p: &Position, heads: &[Option<&[u8]>], dir: &str) -> Start {
    let oldest = heads
        .iter()
        .position(|h| h.is_some_and(|h| head_matches(h, &p.id.fp)));
    match oldest {
        Some(index) if p.id.fp.is_strong() => Start::Resume {
            index,
            offset: p.offset,
        },
        Some(index) if p.id.fp.is_empty() => Start::Reread {
            index,
            why: format!(
                "position file names {} by none of its bytes (it was empty, or the position \
                 file unreadable), which matches every file; reading again from the oldest file",
                p.name
            ),
            lost: false,
        },
        Some(index) => Start::Reread {
            index,
            why: format!(
                "position file names {} at offset {} by only its first {} bytes, which cannot tell \
                 files apart; reading again from the oldest file that starts with them",
                p.name, p.offset, p.id.fp.len
            ),
            lost: false,
        },
        None if p.done => Start::Reread {
            index: 0,
            why: format!(
                "position file names {} (read to its end, {} bytes), which is no longer in {dir}; \
                 which files came after it cannot be told, so every remaining file is read again",
                p.name, p.offset
            ),
            lost: false,
        },
        None => Start::Reread {
            index: 0,
            why: format!(
                "position file names {} (inode {}) at offset {}, but no file in {dir} starts with \
                 the same bytes any more: what it held past that offset cannot be read again, and \
                 is lost unless it was delivered after the position was last written; reading \
                 every remaining file from its start",
                p.name, p.id.ino, p.offset
            ),
            lost: true,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub fp: Fingerprint,
}

/// Everything before `offset` in the file `id` has been acked by the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub id: FileId,
    pub offset: u64,
    /// The file was read to its end and a newer one followed (rule 3's anchor): if it is gone
    /// at start-up, nothing of it was lost.
    pub done: bool,
    /// The name the file had when the position was taken; for people reading the file and logs.
    pub name: String,
}

impl Position {
    /// A position every file matches (an empty fingerprint at offset 0), for a position file
    /// that cannot be read: its file may be any of the rotation set, so start-up reads them
    /// all again from the oldest (rule 5) rather than start at `audit.log` and skip the rest.
    pub fn unknown() -> Position {
        Position {
            id: FileId {
                fp: Fingerprint::of(b""),
                ..FileId::default()
            },
            offset: 0,
            done: false,
            name: "an unknown file".into(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (inode {}) offset {}",
            self.name, self.id.ino, self.offset
        )
    }
}

const MAGIC: &str = "audit-forwarder-position v1";

pub fn encode(p: &Position) -> String {
    format!(
        "{MAGIC}\ndev={} ino={} fp_len={} fp_hash={:016x} offset={} done={} name={}\n",
        p.id.dev, p.id.ino, p.id.fp.len, p.id.fp.hash, p.offset, p.done as u8, p.name
    )
}

pub fn decode(text: &str) -> Result<Position, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("does not start with {MAGIC:?}"));
    }
    let line = lines.next().ok_or("second line missing")?;
    let (fields, name) = line.split_once(" name=").ok_or("name= missing")?;
    let get = |key: &str| -> Result<&str, String> {
        fields
            .split(' ')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .ok_or(format!("{key}= missing"))
    };
    let num = |v: &str, key: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{key}={v:?} is not a number"))
    };
    let dev = num(get("dev")?, "dev")?;
    let ino = num(get("ino")?, "ino")?;
    let fp_len = num(get("fp_len")?, "fp_len")?;
    let fp_hash_s = get("fp_hash")?;
    let fp_hash = u64::from_str_radix(fp_hash_s, 16)
        .map_err(|_| format!("fp_hash={fp_hash_s:?} is not hex"))?;
    let offset = num(get("offset")?, "offset")?;
    // Absent in files written before rule 3 existed.
    let done = get("done").is_ok_and(|v| v == "1");
    if fp_len > FINGERPRINT_BYTES as u64 {
        return Err(format!(
            "fp_len={fp_len} is larger than {FINGERPRINT_BYTES}"
        ));
    }
    Ok(Position {
        id: FileId {
            dev,
            ino,
            fp: Fingerprint {
                len: fp_len as u32,
                hash: fp_hash,
            },
        },
        offset,
        done,
        name: name.to_string(),
    })
}

/// Reads the position file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Position>, String> {
    match fs::read_to_string(path) {
        Ok(text) => decode(&text)
            .map(Some)
            .map_err(|e| format!("position file {}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("position file {}: {e}", path.display())),
    }
}

/// Writes the position file atomically.
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
    last: Option<Position>,
}

impl Store {
    pub fn new(path: PathBuf, current: Option<Position>) -> Store {
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        Store {
            path,
            tmp: PathBuf::from(tmp),
            last: current,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file holds: the position loaded at start-up or last written.
    pub fn last(&self) -> Option<&Position> {
        self.last.as_ref()
    }

    pub fn save(&mut self, p: &Position) -> io::Result<()> {
        if self.last.as_ref() == Some(p) {
            return Ok(());
        }
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.tmp)?;
            f.write_all(encode(p).as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.last = Some(p.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let p = Position {
            id: FileId {
                dev: 2049,
                ino: 1234567,
                fp: Fingerprint {
                    len: 256,
                    hash: 0xdead_beef_0000_0001,
                },
            },
            offset: 987654321,
            done: true,
            name: "audit-2025-07-16T10-12-56.525.log with space".into(),
        };
        assert_eq!(decode(&encode(&p)), Ok(p.clone()));
        let bad: &[(&str, &str)] = &[
            ("", "does not start"),
            ("audit-forwarder-position v1\n", "second line missing"),
            (
                "audit-forwarder-position v1\ndev=1 ino=2 fp_len=3 fp_hash=zz offset=4 name=a\n",
                "fp_hash",
            ),
            (
                "audit-forwarder-position v1\ndev=1 ino=2 fp_len=3 fp_hash=ff name=a\n",
                "offset= missing",
            ),
            (
                "audit-forwarder-position v1\ndev=x ino=2 fp_len=3 fp_hash=ff offset=1 name=a\n",
                "dev=",
            ),
            (
                "audit-forwarder-position v1\ndev=1 ino=2 fp_len=999 fp_hash=ff offset=1 name=a\n",
                "fp_len=999",
            ),
        ];
        for (text, want) in bad {
            let err = decode(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn fingerprint_only_covers_the_first_bytes() {
        let mut a = vec![b'x'; 300];
        let fa = Fingerprint::of(&a);
        a[299] = b'y';
        assert_eq!(Fingerprint::of(&a), fa);
        a[0] = b'y';
        assert_ne!(Fingerprint::of(&a), fa);
        assert_eq!(Fingerprint::read_from(&a[..]).unwrap(), Fingerprint::of(&a));
        assert_eq!(Fingerprint::of(b"").len, 0);
    }

    #[test]
    fn store_writes_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("af-offsets-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pos");
        assert_eq!(load(&path), Ok(None));
        let mut s = Store::new(path.clone(), None);
        let mut p = Position {
            id: FileId::default(),
            offset: 10,
            done: false,
            name: "audit.log".into(),
        };
        s.save(&p).unwrap();
        p.offset = 20;
        s.save(&p).unwrap();
        assert_eq!(load(&path), Ok(Some(p)));
        assert!(!dir.join("pos.tmp").exists());
        fs::write(&path, "junk").unwrap();
        assert!(load(&path).unwrap_err().contains("pos"));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A head of `n` bytes that no other test head shares: `tag` repeated.
    fn head(tag: u8, n: usize) -> Vec<u8> {
        vec![tag; n]
    }

    fn fp(tag: u8, n: usize) -> Fingerprint {
        Fingerprint::of(&head(tag, n))
    }

    fn position(fp: Fingerprint, offset: u64, done: bool) -> Position {
        Position {
            id: FileId { dev: 1, ino: 7, fp },
            offset,
            done,
            name: "audit.log".into(),
        }
    }

    #[test]
    fn rule1_only_full_fingerprints_are_strong_and_heads_match_their_prefix() {
        let cases: &[(usize, bool)] = &[(0, false), (1, false), (255, false), (256, true)];
        for &(n, strong) in cases {
            assert_eq!(fp(b'a', n).is_strong(), strong, "{n} bytes");
        }
        // Reading more than 256 bytes still yields a 256-byte fingerprint.
        assert!(fp(b'a', 1000).is_strong());
        let long = head(b'a', 256);
        let cases: &[(&[u8], Fingerprint, bool)] = &[
            (&long, fp(b'a', 256), true),
            (&long, fp(b'b', 256), false),
            (&long[..255], fp(b'a', 256), false),
            (&long, fp(b'a', 10), true),
            (&long, Fingerprint::of(b""), true),
            (b"", Fingerprint::of(b""), true),
            (b"", fp(b'a', 1), false),
        ];
        for (i, (h, f, want)) in cases.iter().enumerate() {
            assert_eq!(head_matches(h, f), *want, "case {i}");
        }
    }

    #[test]
    fn rule2_inode_identifies_only_the_file_we_hold() {
        let held = FileId {
            dev: 1,
            ino: 7,
            fp: fp(b'a', 256),
        };
        let cases: &[(u64, u64, bool)] = &[(1, 7, true), (1, 8, false), (2, 7, false)];
        for &(dev, ino, want) in cases {
            assert_eq!(held_open(&held, dev, ino), want, "dev {dev} ino {ino}");
        }
    }

    #[test]
    fn rule3_weak_positions_are_saved_as_the_last_strong_end() {
        let anchor = position(fp(b'a', 256), 9000, true);
        let cases: &[(Position, Option<&Position>, &Position)] = &[
            // The case: a rotated, still empty audit.log.
            (position(fp(b'b', 0), 0, false), Some(&anchor), &anchor),
            (position(fp(b'b', 100), 100, false), Some(&anchor), &anchor),
            (
                position(fp(b'b', 256), 300, false),
                Some(&anchor),
                &position(fp(b'b', 256), 300, false),
            ),
            // Nothing strong was ever read: the weak position is all there is.
            (
                position(fp(b'b', 0), 0, false),
                None,
                &position(fp(b'b', 0), 0, false),
            ),
        ];
        for (i, (current, anchor, want)) in cases.iter().enumerate() {
            assert_eq!(committable(current.clone(), *anchor), **want, "case {i}");
        }
    }

    #[test]
    fn rules4_5_start_up_places_by_content_and_rereads_when_unsure() {
        let (a, b, c) = (head(b'a', 256), head(b'b', 256), head(b'c', 40));
        let shared = {
            // Two files that share their first 60 bytes (the JSON before the auditID).
            let mut x = head(b'p', 256);
            x[100] = b'x';
            x
        };
        let mut shared2 = shared.clone();
        shared2[100] = b'y';
        let heads: Vec<Option<&[u8]>> = vec![
            Some(&a),       // 0: oldest backup
            Some(&a),       // 1: its gzip copy, written while we were down
            None,           // 2: unreadable (a gzip being written)
            Some(&shared),  // 3
            Some(&b),       // 4
            Some(&shared2), // 5
            Some(&c),       // 6: audit.log, short
        ];
        let resume = |index, offset| Start::Resume { index, offset };
        let cases: &[(Position, Option<Start>, Option<bool>)] = &[
            // Rule 4: by content, oldest copy, offset kept; the inode is not consulted.
            (
                position(fp(b'a', 256), 77, false),
                Some(resume(0, 77)),
                None,
            ),
            (position(fp(b'b', 256), 5, true), Some(resume(4, 5)), None),
            // Rule 5: weak positions re-read from the oldest entry starting with their bytes.
            (position(Fingerprint::of(b""), 0, false), None, Some(false)),
            (
                position(Fingerprint::of(&shared[..60]), 60, false),
                Some(Start::Reread {
                    index: 3,
                    why: String::new(),
                    lost: false,
                }),
                Some(false),
            ),
            (
                position(Fingerprint::of(&c[..20]), 20, false),
                Some(Start::Reread {
                    index: 6,
                    why: String::new(),
                    lost: false,
                }),
                Some(false),
            ),
            // Gone: a finished file loses nothing, an unfinished one may have.
            (position(fp(b'z', 256), 500, true), None, Some(false)),
            (position(fp(b'z', 256), 500, false), None, Some(true)),
        ];
        for (i, (p, want, lost_want)) in cases.iter().enumerate() {
            let got = place(p, &heads, "/auditlog");
            match (got, want, lost_want) {
                (Start::Resume { index, offset }, Some(w), None) => {
                    assert_eq!(&Start::Resume { index, offset }, w, "case {i}")
                }
                (Start::Reread { index, why, lost }, w, Some(l)) => {
                    let want_index = match w {
                        Some(Start::Reread { index, .. }) => *index,
                        _ => 0,
                    };
                    assert_eq!((index, lost), (want_index, *l), "case {i}: {why}");
                    assert!(why.contains("audit.log"), "case {i}: {why}");
                    assert_eq!(why.contains("lost"), lost, "case {i}: {why}");
                }
                (got, _, _) => panic!("case {i}: {got:?}"),
            }
        }
        // An unreadable position file: every file again, from the oldest readable one, and the
        // log says so without counting "its first 0 bytes".
        match place(&Position::unknown(), &heads, "/d") {
            Start::Reread {
                index: 0,
                lost: false,
                why,
            } => assert!(
                why.contains("by none of its bytes") && why.contains("an unknown file"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            place(&Position::unknown(), &[None, Some(&b)], "/d"),
            Start::Reread {
                index: 1,
                lost: false,
                ..
            }
        ));
        assert!(matches!(
            place(&position(fp(b'a', 256), 1, false), &[], "/d"),
            Start::Reread {
                index: 0,
                lost: true,
                ..
            }
        ));
    }

    #[test]
    fn rule6_only_strong_fingerprints_hide_a_file() {
        let cases: &[(Fingerprint, Fingerprint, bool)] = &[
            (fp(b'a', 256), fp(b'a', 256), true),
            (fp(b'a', 256), fp(b'b', 256), false),
            (fp(b'a', 3), fp(b'a', 3), false),
            (Fingerprint::of(b""), Fingerprint::of(b""), false),
        ];
        for (i, (finished, cand, want)) in cases.iter().enumerate() {
            assert_eq!(suppresses(finished, cand), *want, "case {i}");
        }
    }

    #[test]
    fn done_survives_the_file_and_old_files_read_as_not_done() {
        let p = position(fp(b'a', 256), 10, true);
        assert_eq!(decode(&encode(&p)), Ok(p));
        let old =
            "audit-forwarder-position v1\ndev=1 ino=2 fp_len=0 fp_hash=ff offset=1 name=a b\n";
        let got = decode(old).unwrap();
        assert!(!got.done);
        assert_eq!(got.name, "a b");
    }
}
