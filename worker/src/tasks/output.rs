//! A task's output on disk, bounded: stdout and stderr as they interleaved,
//! kept in at most two segment files in `<user>/state/tasks/<task>/`, each
//! named by the offset of its first byte in the whole output (20 decimal
//! digits, so names sort as offsets do).
//!
//! A segment grows to half the task's output limit; then a new one starts
//! and the one before the last is removed. So at most `limit` bytes are
//! kept, the newest ones, and the output's offsets stay those of the whole
//! output: `dropped` (the first kept offset) and `written` (one past the
//! last) describe what is left, whether the task runs or ended long ago,
//! and whatever process wrote it. A reader holding a segment that is
//! removed meanwhile still reads it (the file lives while it is open).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use warren_protocol::OpError;

/// Digits of a segment's name.
const NAME_DIGITS: usize = 20;

/// The least output kept, whatever limit a request names.
pub const MIN_OUTPUT_LIMIT: u64 = 4096;

fn segment_name(offset: u64) -> String {
    format!("{offset:0NAME_DIGITS$}")
}

fn io(err: std::io::Error, what: &str) -> OpError {
    match err.raw_os_error() {
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => {
            OpError::DiskFull(format!("{what}: the server's disk is full"))
        }
        _ if err.kind() == std::io::ErrorKind::NotFound => {
            OpError::NotFound(format!("{what}: no such task output"))
        }
        _ => OpError::Internal(format!("{what}: {err}")),
    }
}

/// The segments kept in `dir`: (first offset, length), oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, u64)>, OpError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|err| io(err, "task output"))?;
    for entry in entries {
        let entry = entry.map_err(|err| io(err, "task output"))?;
        let name = entry.file_name();
        let Some(offset) = name.to_str().and_then(|name| {
            (name.len() == NAME_DIGITS)
                .then(|| name.parse::<u64>().ok())
                .flatten()
        }) else {
            continue;
        };
        let len = entry
            .metadata()
            .map_err(|err| io(err, "task output"))?
            .len();
        found.push((offset, len));
    }
    found.sort_unstable();
    Ok(found)
}

/// What is kept: `(dropped, written)`.
pub fn extent(dir: &Path) -> Result<(u64, u64), OpError> {
    let kept = segments(dir)?;
    let dropped = kept.first().map_or(0, |(offset, _)| *offset);
    let written = kept.last().map_or(0, |(offset, len)| offset + len);
    Ok((dropped, written))
}

/// Reads up to `max` bytes at `offset` of the whole output, from whichever
/// segment holds it. `Ok(None)`: that offset was dropped (the caller moves
/// on to [`extent`]'s `dropped`); an empty vector: nothing there yet.
pub fn read_at(dir: &Path, offset: u64, max: usize) -> Result<Option<Vec<u8>>, OpError> {
    let kept = segments(dir)?;
    let Some(&(first, _)) = kept.first() else {
        return Ok(Some(Vec::new()));
    };
    if offset < first {
        return Ok(None);
    }
    let Some(&(start, len)) = kept.iter().rev().find(|(start, _)| *start <= offset) else {
        return Ok(None);
    };
    if offset >= start + len {
        return Ok(Some(Vec::new()));
    }
    let file = match File::open(dir.join(segment_name(start))) {
        Ok(file) => file,
        // Removed since the listing: dropped.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io(err, "task output")),
    };
    let want = max.min((start + len - offset) as usize);
    let mut buf = vec![0u8; want];
    let n = file
        .read_at(&mut buf, offset - start)
        .map_err(|err| io(err, "task output"))?;
    buf.truncate(n);
    Ok(Some(buf))
}

/// The writing end, owned by the task's supervisor.
#[derive(Debug)]
pub struct OutputLog {
    dir: PathBuf,
    segment_cap: u64,
    current: File,
    current_start: u64,
    previous_start: Option<u64>,
    written: u64,
}

impl OutputLog {
    /// Creates `dir` (which must not exist) and the first segment.
    pub fn create(dir: PathBuf, limit: u64) -> Result<OutputLog, OpError> {
        std::fs::create_dir(&dir).map_err(|err| io(err, "cannot keep the task's output"))?;
        let current = create_segment(&dir, 0)?;
        Ok(OutputLog {
            dir,
            segment_cap: (limit.max(MIN_OUTPUT_LIMIT) / 2).max(1),
            current,
            current_start: 0,
            previous_start: None,
            written: 0,
        })
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`, starting a new segment (and dropping the oldest)
    /// whenever the current one is full.
    pub fn append(&mut self, mut bytes: &[u8]) -> Result<(), OpError> {
        while !bytes.is_empty() {
            let room = self.segment_cap - (self.written - self.current_start);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let take = bytes.len().min(room as usize);
            self.current
                .write_all(&bytes[..take])
                .map_err(|err| io(err, "cannot keep the task's output"))?;
            self.written += take as u64;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), OpError> {
        let next = create_segment(&self.dir, self.written)?;
        if let Some(oldest) = self.previous_start.replace(self.current_start) {
            let _ = std::fs::remove_file(self.dir.join(segment_name(oldest)));
        }
        self.current = next;
        self.current_start = self.written;
        Ok(())
    }
}

fn create_segment(dir: &Path, offset: u64) -> Result<File, OpError> {
    std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(segment_name(offset)))
        .map_err(|err| io(err, "cannot keep the task's output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_within_the_limit_with_their_offsets() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t");
        let mut log = OutputLog::create(dir.clone(), 8192).unwrap();
        let all: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in all.chunks(777) {
            log.append(chunk).unwrap();
        }
        let (dropped, written) = extent(&dir).unwrap();
        assert_eq!(written, 50_000);
        assert!(written - dropped <= 8192, "kept {}", written - dropped);
        assert!(written - dropped >= 4096, "kept {}", written - dropped);
        // Every kept byte is the one written at that offset.
        let mut offset = dropped;
        while offset < written {
            let bytes = read_at(&dir, offset, 1000).unwrap().unwrap();
            assert!(!bytes.is_empty());
            assert_eq!(
                &bytes[..],
                &all[offset as usize..offset as usize + bytes.len()]
            );
            offset += bytes.len() as u64;
        }
        assert_eq!(
            read_at(&dir, 0, 10).unwrap(),
            None,
            "dropped offsets say so"
        );
        assert_eq!(read_at(&dir, written, 10).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn a_short_output_is_kept_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t");
        let mut log = OutputLog::create(dir.clone(), 1 << 20).unwrap();
        log.append(b"hello\n").unwrap();
        assert_eq!(extent(&dir).unwrap(), (0, 6));
        assert_eq!(read_at(&dir, 2, 100).unwrap().unwrap(), b"llo\n");
    }
}
