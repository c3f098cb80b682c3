//! The position file: which file (device, inode and a fingerprint of its first bytes) and which
//! offset in it every byte before has been acked. Written atomically (temp file, fsync, rename,
//! fsync of the directory) so a crash leaves either the old or the new position, never a torn one.

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
    /// The name the file had when the position was taken; for people reading the file and logs.
    pub name: String,
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
        "{MAGIC}\ndev={} ino={} fp_len={} fp_hash={:016x} offset={} name={}\n",
        p.id.dev, p.id.ino, p.id.fp.len, p.id.fp.hash, p.offset, p.name
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

    /// Whether `p` differs from what the file holds.
    pub fn is_behind(&self, p: Option<&Position>) -> bool {
        p.is_some() && p != self.last.as_ref()
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
}
