//! Atomic publication of finished files into the dataset.
//!
//! A file is written under `_staging/` (outside both tables, so no reader's glob matches it),
//! fsynced, renamed into its partition, and the partition directory is fsynced. A reader sees
//! the whole file or nothing, and after the directory fsync the file survives power loss: that is
//! the moment the sink reports the file's traces durable. The `spans` file is published before
//! the `traces` file, so a trace row never points at spans that are not there yet.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::file::Finished;

/// The tables, in publication order.
const TABLES: [&str; 2] = ["spans", "traces"];
/// Directory of files being written.
const STAGING: &str = "_staging";

/// A filesystem operation that failed, and on which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct PublishError {
    /// What was being done (`write`, `rename`, …).
    pub op: &'static str,
    /// The path concerned.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PublishError {
    let path = path.to_path_buf();
    move |source| PublishError { op, path, source }
}

/// The dataset root: `traces/`, `spans/` and `_staging/`.
pub struct Dataset {
    root: PathBuf,
}

impl Dataset {
    /// Creates the directories and removes staging leftovers of an earlier crash; returns how
    /// many were removed.
    ///
    /// # Errors
    ///
    /// [`PublishError`] when a directory cannot be created or read.
    pub fn open(root: &Path) -> Result<(Self, usize), PublishError> {
        let staging = root.join(STAGING);
        fs::create_dir_all(&staging).map_err(at("create", &staging))?;
        for table in TABLES {
            let dir = root.join(table);
            fs::create_dir_all(&dir).map_err(at("create", &dir))?;
        }
        let mut removed = 0;
        for entry in fs::read_dir(&staging).map_err(at("read", &staging))? {
            let path = entry.map_err(at("read", &staging))?.path();
            fs::remove_file(&path).map_err(at("remove", &path))?;
            removed += 1;
        }
        Ok((
            Self {
                root: root.to_path_buf(),
            },
            removed,
        ))
    }

    /// Where the files of `file` will be, in publication order.
    pub fn targets(&self, file: &Finished) -> Vec<PathBuf> {
        TABLES
            .iter()
            .map(|table| self.root.join(table).join(&file.partition).join(&file.name))
            .collect()
    }

    /// Publishes both files of `file`; on error nothing partial is visible and the call can be
    /// repeated.
    ///
    /// # Errors
    ///
    /// [`PublishError`] naming the operation and path that failed.
    pub fn publish(&self, file: &Finished) -> Result<(), PublishError> {
        for (table, bytes) in TABLES.into_iter().zip([&file.spans, &file.traces]) {
            let dir = self.root.join(table).join(&file.partition);
            self.create_synced(&dir)?;
            let staged = self
                .root
                .join(STAGING)
                .join(format!("{table}-{}", file.name));
            write_synced(&staged, bytes)?;
            let target = dir.join(&file.name);
            if let Err(e) = fs::rename(&staged, &target) {
                let _ = fs::remove_file(&staged);
                return Err(at("rename into", &target)(e));
            }
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Creates `dir` if needed, making each new level durable in its parent.
    fn create_synced(&self, dir: &Path) -> Result<(), PublishError> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(at("create", dir))?;
        let mut level = dir;
        while let Some(parent) = level.parent() {
            sync_dir(parent)?;
            if parent == self.root {
                break;
            }
            level = parent;
        }
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let result = File::create(path).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    result.map_err(|e| {
        let _ = fs::remove_file(path);
        at("write", path)(e)
    })
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Finished {
        Finished {
            partition: "date=2026-11-21".into(),
            name: "part-0000000000000001.parquet".into(),
            traces: b"traces".to_vec(),
            spans: b"spans".to_vec(),
            revisions: Vec::new(),
            positions: Vec::new(),
            span_rows: 0,
        }
    }

    #[test]
    fn publishing_moves_both_files_into_place_and_start_clears_staging() {
        let dir = tempfile::tempdir().unwrap();
        let (dataset, _) = Dataset::open(dir.path()).unwrap();
        dataset.publish(&finished()).unwrap();
        for table in TABLES {
            let file = dir
                .path()
                .join(table)
                .join("date=2026-11-21/part-0000000000000001.parquet");
            assert_eq!(fs::read(file).unwrap(), table.as_bytes());
        }
        fs::write(
            dir.path().join(STAGING).join("spans-part-x.parquet"),
            b"half",
        )
        .unwrap();
        let (_, removed) = Dataset::open(dir.path()).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(fs::read_dir(dir.path().join(STAGING)).unwrap().count(), 0);
    }

    #[test]
    fn a_failure_names_the_operation_and_path_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (dataset, _) = Dataset::open(dir.path()).unwrap();
        fs::remove_dir(dir.path().join("spans")).unwrap();
        fs::write(dir.path().join("spans"), b"not a directory").unwrap();
        let error = dataset.publish(&finished()).unwrap_err().to_string();
        let expected = format!(
            "cannot create {}",
            dir.path().join("spans/date=2026-11-21").display()
        );
        assert!(error.starts_with(&expected), "{error}");
        assert_eq!(fs::read_dir(dir.path().join(STAGING)).unwrap().count(), 0);
    }
}
