//! The control-plane files object of a backup (`include-files`): a tar of the configured paths
//! (`crate::files`), then the same zstd and age as the snapshot, streamed into the store.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{encode, pump_upload, BackupError, Batch, Stage, CHANNEL_DEPTH};
use crate::catalog::{self, FilesObject};
use crate::config::Config;
use crate::storage::{ObjectStore, ObjectWriter};

/// `<id>.files.tar.zst.age`, written but not yet visible: [`Prepared::commit`] publishes it
/// right before the manifest, [`Prepared::abort`] drops it. An interrupted run leaves only an
/// incomplete upload or temp file, which the next run's stale-upload cleanup removes.
pub struct Prepared {
    writer: Box<dyn ObjectWriter>,
    pub object: FilesObject,
}

impl Prepared {
    pub async fn commit(self) -> Result<FilesObject, BackupError> {
        let committed = self.writer.commit().await?;
        if committed.size != self.object.size {
            return Err(BackupError::StoredSize {
                key: Some(self.object.key.clone()),
                stored: committed.size,
                written: self.object.size,
            });
        }
        Ok(self.object)
    }

    pub async fn abort(self) {
        let _ = self.writer.abort().await;
    }
}

/// Archives, compresses and encrypts the control-plane files into an uncommitted object.
pub async fn prepare(
    config: &Config,
    store: &dyn ObjectStore,
    id: &str,
    cancel: &CancellationToken,
) -> Result<Prepared, BackupError> {
    crate::files::check_sources(&config.include_files)?;
    let key = catalog::files_key(id);
    let writer = store.create(&key).await?;
    let (tar_tx, tar_rx) = mpsc::channel::<Batch>(CHANNEL_DEPTH);
    let (upload_tx, upload_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let paths = config.include_files.clone();
    let archiver = tokio::task::spawn_blocking(move || {
        let (facts, mut sender) = crate::files::archive(
            &paths,
            encode::ChunkWriter::new(tar_tx, |chunk| vec![chunk], "encoder"),
        )?;
        sender
            .send_buffer()
            .map_err(|source| crate::files::FilesError::HandOn { source })?;
        Ok::<_, BackupError>(facts)
    });
    let encoder = encode::start(
        config.compression,
        config.encryption.clone(),
        encode::Input::Batches(tar_rx),
        upload_tx,
    );
    let upload = tokio::spawn(pump_upload(writer, upload_rx, cancel.clone()));
    let internal = |source: tokio::task::JoinError| BackupError::TaskFailed {
        stage: Stage::Files,
        source,
    };
    let archived = archiver.await.map_err(internal).and_then(|r| r);
    let encoded = encoder.join().await;
    let (writer, uploaded) = upload.await.map_err(internal)?;
    // A dead upload stops the encoder, which stops the archiver: report the first cause.
    let (facts, encoded) = match (uploaded, encoded, archived) {
        (Ok(_), Ok(encoded), Ok(facts)) => (facts, encoded),
        (uploaded, encoded, archived) => {
            let _ = writer.abort().await;
            let error = [uploaded.err(), encoded.err(), archived.err()]
                .into_iter()
                .flatten()
                .next()
                .expect("an error was seen");
            return Err(error);
        }
    };
    let object = FilesObject {
        key,
        size: encoded.size,
        sha256: hex::encode(encoded.sha256),
        paths: config
            .include_files
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        entries: facts.entries,
        content_bytes: facts.bytes,
    };
    Ok(Prepared { writer, object })
}
