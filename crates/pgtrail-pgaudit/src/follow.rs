//! Following PostgreSQL's log directory: the files of one format, oldest first, across
//! rotation, with a persisted position.
//!
//! Invariants:
//! - Only complete lines are read; a partial last line waits for the rest.
//! - The saved position is never past an entry that has not been handed out: it stands at
//!   the start of the entry still being assembled (a stderr entry is complete only when
//!   the next one starts), so a restart re-reads that entry and nothing before it.
//! - The caller saves the position ([`Follower::commit`]) after the entries it was given
//!   are durable. A clean restart neither repeats nor skips; a crash between the caller's
//!   durability and the commit can repeat the entries of that one poll.
//! - A file that shrinks below the position, or is replaced (another inode under the
//!   name), was truncated or rotated in place: it is read again from its start.
//! - When the current file is exhausted and a newer one exists (by modification time,
//!   then name), the pending entry is completed and the newer file is followed.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::entry::{Assembler, Format, LogEntry, ParseError};

/// Where reading stands: a file of the directory, its inode, and the byte offset and line
/// number of the next line to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub file: String,
    pub inode: u64,
    pub offset: u64,
    pub line: u64,
}

/// An entry (or a line that could not be read) and the file it came from.
#[derive(Debug)]
pub struct Item {
    pub file: String,
    pub entry: Result<LogEntry, ParseError>,
    /// A position to read again from that yields this entry (for a caller that has not
    /// finished with it when it saves its position: see [`Follower::commit_at`]).
    pub start: Position,
}

#[derive(Debug)]
struct Current {
    name: String,
    file: std::fs::File,
    inode: u64,
    /// Bytes and lines consumed (complete lines only).
    offset: u64,
    line: u64,
    /// Where an entry still being assembled starts: the position to save.
    safe: (u64, u64),
}

impl Current {
    fn safe_position(&self) -> Position {
        Position { file: self.name.clone(), inode: self.inode, offset: self.safe.0, line: self.safe.1 }
    }
}

/// Follows the log files of one format in a directory.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    extension: &'static str,
    format: Format,
    assembler: Assembler,
    state: PathBuf,
    current: Option<Current>,
    last_data: Instant,
    /// A stderr entry with no new line for this long is complete.
    pub quiet: Duration,
}

/// The file extension PostgreSQL gives each format (log_filename's .log is replaced by
/// .csv and .json for csvlog and jsonlog).
pub fn extension(format: &Format) -> &'static str {
    match format {
        Format::Stderr(_) => "log",
        Format::Csvlog => "csv",
        Format::Jsonlog => "json",
    }
}

fn files(dir: &Path, extension: &str) -> std::io::Result<Vec<(SystemTime, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if meta.is_file() && Path::new(&name).extension().is_some_and(|e| e == extension) {
            files.push((meta.modified()?, name));
        }
    }
    files.sort();
    Ok(files)
}

impl Follower {
    /// Starts at the saved position in `state` (created when missing: then at the oldest file).
    pub fn open(dir: &Path, format: Format, state: &Path) -> std::io::Result<Follower> {
        let extension = extension(&format);
        let mut follower = Follower {
            dir: dir.to_path_buf(),
            extension,
            assembler: Assembler::new(format.clone()),
            format,
            state: state.to_path_buf(),
            current: None,
            last_data: Instant::now(),
            quiet: Duration::from_millis(500),
        };
        if let Ok(text) = std::fs::read_to_string(state) {
            let saved: Position = serde_json::from_str(&text).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", state.display()))
            })?;
            let path = dir.join(&saved.file);
            if let Ok(file) = std::fs::File::open(&path) {
                let meta = file.metadata()?;
                if meta.ino() == saved.inode && meta.len() >= saved.offset {
                    follower.current = Some(Current {
                        name: saved.file.clone(),
                        file,
                        inode: saved.inode,
                        offset: saved.offset,
                        line: saved.line,
                        safe: (saved.offset, saved.line),
                    });
                }
            }
        }
        Ok(follower)
    }

    /// The position to save: the start of anything not yet handed out.
    pub fn position(&self) -> Option<Position> {
        self.current.as_ref().map(|c| Position {
            file: c.name.clone(),
            inode: c.inode,
            offset: c.safe.0,
            line: c.safe.1,
        })
    }

    /// Saves the position (write a temporary file, fsync, rename).
    pub fn commit(&self) -> std::io::Result<()> {
        let Some(position) = self.position() else { return Ok(()) };
        self.commit_at(&position)
    }

    /// Saves `position` (an item's [`Item::start`]): reading again starts there, so the
    /// entries from it on are handed out again after a restart.
    pub fn commit_at(&self, position: &Position) -> std::io::Result<()> {
        let mut tmp = self.state.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, serde_json::to_string(position).unwrap_or_default().as_bytes())?;
            file.sync_data()?;
        }
        std::fs::rename(&tmp, &self.state)
    }

    fn open_file(&mut self, name: &str) -> std::io::Result<()> {
        let file = std::fs::File::open(self.dir.join(name))?;
        let inode = file.metadata()?.ino();
        self.assembler = Assembler::new(self.format.clone());
        self.current = Some(Current { name: name.to_string(), file, inode, offset: 0, line: 0, safe: (0, 0) });
        Ok(())
    }

    /// Reads what is new: complete entries, in order.
    pub fn poll(&mut self) -> std::io::Result<Vec<Item>> {
        let mut items = Vec::new();
        if self.current.is_none() {
            match files(&self.dir, self.extension)?.first() {
                Some((_, name)) => {
                    let name = name.clone();
                    self.open_file(&name)?;
                }
                None => return Ok(items),
            }
        }
        // Rotated or truncated in place?
        let (name, inode, offset) = {
            let c = self.current.as_ref().expect("opened above");
            (c.name.clone(), c.inode, c.offset)
        };
        match std::fs::metadata(self.dir.join(&name)) {
            Ok(meta) if meta.ino() != inode || meta.len() < offset => {
                self.flush_into(&mut items);
                self.open_file(&name)?;
            }
            _ => {}
        }
        let read_any = self.read_lines(&mut items)?;
        if read_any {
            self.last_data = Instant::now();
        } else {
            // Nothing new here: a newer file means this one is done.
            let current = self.current.as_ref().expect("opened above");
            let modified = current.file.metadata()?.modified()?;
            let newer = files(&self.dir, self.extension)?
                .into_iter()
                .find(|(time, n)| (*time, n.as_str()) > (modified, current.name.as_str()) && *n != current.name);
            if let Some((_, next)) = newer {
                self.read_lines(&mut items)?;
                self.flush_into(&mut items);
                self.open_file(&next)?;
                self.read_lines(&mut items)?;
            } else if self.assembler.has_pending() && self.last_data.elapsed() >= self.quiet {
                self.flush_into(&mut items);
            }
        }
        Ok(items)
    }

    fn flush_into(&mut self, items: &mut Vec<Item>) {
        if let Some(entry) = self.assembler.flush() {
            let current = self.current.as_mut().expect("a file is open");
            let start = current.safe_position();
            items.push(Item { file: current.name.clone(), entry, start });
        }
        if let Some(current) = self.current.as_mut() {
            current.safe = (current.offset, current.line);
        }
    }

    /// Reads complete lines from the current file; true if any.
    fn read_lines(&mut self, items: &mut Vec<Item>) -> std::io::Result<bool> {
        let current = self.current.as_mut().expect("a file is open");
        current.file.seek(SeekFrom::Start(current.offset))?;
        let mut bytes = Vec::new();
        current.file.by_ref().take(8 << 20).read_to_end(&mut bytes)?;
        let Some(last_newline) = bytes.iter().rposition(|b| *b == b'\n') else { return Ok(false) };
        let mut start = 0;
        for end in bytes[..=last_newline].iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i) {
            let line = String::from_utf8_lossy(&bytes[start..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            let line_start = (current.offset + start as u64, current.line);
            current.line += 1;
            let done = self.assembler.push_line(line, current.line);
            let completed = !done.is_empty();
            // Entries completed by this line started at or after the last safe point.
            let from = current.safe_position();
            for entry in done {
                items.push(Item { file: current.name.clone(), entry, start: from.clone() });
            }
            start = end + 1;
            if !self.assembler.has_pending() {
                current.safe = (current.offset + start as u64, current.line);
            } else if completed {
                current.safe = line_start;
            }
        }
        current.offset += start as u64;
        Ok(true)
    }
}
