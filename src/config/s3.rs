//! `storage.s3` -> [`S3Settings`] (the type is the storage module's; this is only the reading).

use std::path::PathBuf;
use std::time::Duration;

use super::problem::Problem;
use super::raw::RawS3;
use super::validate::Paths;
use super::value::{read, ByteSize, HumanDuration, Parsed};
use crate::storage::s3::{LockMode, S3Config, S3Settings, Sse, DEFAULT_S3_TIMEOUT, MIN_PART_SIZE};

/// The range `storage.s3.timeout` must be in.
const S3_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));
/// The largest part S3 accepts.
const MAX_PART_SIZE: usize = 5 << 30;
/// `storage.s3.part-size` when not given.
const DEFAULT_PART_SIZE: u64 = 16 << 20;

pub(super) fn validate_s3(raw: RawS3, paths: &Paths, problems: &mut Vec<Problem>) -> S3Settings {
    let bucket = raw.bucket.clone().unwrap_or_default();
    if bucket.is_empty() {
        problems.push(Problem::new(
            "storage.s3.bucket",
            "missing: name the bucket backups go to",
        ));
    }
    let (sse, object_lock_mode) = object_protection(&raw, problems);
    let (part_size, concurrency) = transfer(&raw, problems);
    let abort_incomplete_after = read(
        &raw.abort_incomplete_after,
        "storage.s3.abort-incomplete-after",
        ": write it like 1h",
        HumanDuration(Duration::from_secs(3600)),
        problems,
    );
    let timeout = timeout(&raw.timeout, problems);
    let (access_key_id_file, secret_access_key_file) = credentials(&raw, paths, problems);
    let store = S3Config {
        bucket,
        prefix: prefix(raw.prefix),
        region: raw.region.unwrap_or_else(|| "us-east-1".to_string()),
        endpoint: raw.endpoint,
        force_path_style: raw.force_path_style.unwrap_or(false),
        sse,
        kms_key_id: raw.kms_key_id,
        object_lock_days: raw.object_lock_days,
        object_lock_mode,
        storage_class: raw.storage_class,
        part_size,
        concurrency,
        access_key_id_file,
        secret_access_key_file,
        max_attempts: raw.max_attempts.unwrap_or(5).max(1),
        abort_incomplete_after: abort_incomplete_after.0,
    };
    S3Settings { store, timeout }
}

/// Encryption at rest and Object Lock.
fn object_protection(raw: &RawS3, problems: &mut Vec<Problem>) -> (Option<Sse>, LockMode) {
    let sse = raw.sse.as_ref().and_then(|sse| match sse.value() {
        Ok(sse) => Some(*sse),
        Err(message) => {
            problems.push(Problem::new("storage.s3.sse", message));
            None
        }
    });
    if raw.kms_key_id.is_some() && sse != Some(Sse::AwsKms) {
        problems.push(Problem::new(
            "storage.s3.kms-key-id",
            "only applies with sse: aws:kms",
        ));
    }
    let key = "storage.s3.object-lock-mode";
    let mode = read(
        &raw.object_lock_mode,
        key,
        "",
        LockMode::default(),
        problems,
    );
    if raw.object_lock_days == Some(0) {
        problems.push(Problem::new(
            "storage.s3.object-lock-days",
            "must be at least 1, or left out",
        ));
    }
    (sse, mode)
}

/// The key files, both or neither (then the AWS credential chain is used).
fn credentials(
    raw: &RawS3,
    paths: &Paths,
    problems: &mut Vec<Problem>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let access_key_id_file = raw.access_key_id_file.clone().map(|p| paths.resolve(p));
    let secret_access_key_file = raw.secret_access_key_file.clone().map(|p| paths.resolve(p));
    if access_key_id_file.is_some() != secret_access_key_file.is_some() {
        problems.push(Problem::new(
            "storage.s3",
            "give both access-key-id-file and secret-access-key-file, or neither (then the AWS credential chain is used)",
        ));
    }
    (access_key_id_file, secret_access_key_file)
}

/// Empty, or relative and ending in `/`.
fn prefix(raw: Option<String>) -> String {
    raw.map(|p| p.trim_start_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .map(|p| if p.ends_with('/') { p } else { format!("{p}/") })
        .unwrap_or_default()
}

/// `part-size` and `concurrency`: their product bounds the memory an upload takes.
fn transfer(raw: &RawS3, problems: &mut Vec<Problem>) -> (usize, usize) {
    let part_size = read(
        &raw.part_size,
        "storage.s3.part-size",
        ": write it like 16MiB",
        ByteSize(DEFAULT_PART_SIZE),
        problems,
    )
    .0 as usize;
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
        problems.push(Problem::new(
            "storage.s3.part-size",
            format!("{part_size} bytes is outside S3's limits: use 5MiB to 5GiB"),
        ));
    }
    let concurrency = raw.concurrency.unwrap_or(4);
    if !(1..=64).contains(&concurrency) {
        problems.push(Problem::new(
            "storage.s3.concurrency",
            format!("{concurrency}: use 1 to 64 (memory is part-size x concurrency)"),
        ));
    }
    (part_size, concurrency)
}

fn timeout(raw: &Option<Parsed<HumanDuration>>, problems: &mut Vec<Problem>) -> Duration {
    let key = "storage.s3.timeout";
    let Some(parsed) = raw else {
        return DEFAULT_S3_TIMEOUT;
    };
    let default = HumanDuration(DEFAULT_S3_TIMEOUT);
    let timeout = parsed
        .or_problem(key, ": write it like 30s", default, problems)
        .0;
    if !(S3_TIMEOUT_RANGE.0..=S3_TIMEOUT_RANGE.1).contains(&timeout) {
        problems.push(Problem::new(
            key,
            format!(
                "{} is out of range: use 1s to 10m (the longest wait for a connection or an answer to one request; default 30s)",
                parsed.text()
            ),
        ));
        return DEFAULT_S3_TIMEOUT;
    }
    timeout
}
