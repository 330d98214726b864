//! S3 and S3-compatible object storage (aws-sdk-s3).
//!
//! Large objects stream through a multipart upload with bounded memory (part size x concurrency);
//! the upload is completed only on `commit` (after the snapshot verified) and aborted on any
//! failure. Objects smaller than one part use a single PUT. Every part and object carries a
//! SHA-256 checksum the store verifies; the multipart upload declares the algorithm up front
//! (stores such as Garage reject the completion otherwise). Transient errors (timeouts, 5xx,
//! throttling) are retried by the SDK with exponential backoff and jitter; permanent ones fail
//! at once with a message naming the bucket and the fix.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::{
    check_key, Committed, ObjectInfo, ObjectReader, ObjectStore, ObjectWriter, StorageError,
};

/// Validated S3 settings.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Always empty or ending in `/`.
    pub prefix: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub sse: Option<Sse>,
    pub kms_key_id: Option<String>,
    pub object_lock_days: Option<u32>,
    /// `GOVERNANCE` or `COMPLIANCE` ([`LockMode::as_str`]); text because callers that build
    /// an `S3Config` by hand (the conformance tests) write it so.
    pub object_lock_mode: LockMode,
    pub storage_class: Option<String>,
    pub part_size: usize,
    pub concurrency: usize,
    pub access_key_id_file: Option<std::path::PathBuf>,
    pub secret_access_key_file: Option<std::path::PathBuf>,
    pub max_attempts: u32,
    /// Incomplete multipart uploads older than this are from interrupted runs and are aborted.
    pub abort_incomplete_after: Duration,
}

/// `storage.s3.sse`: how the store encrypts objects at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Sse {
    /// `AES256`: keys managed by the store (SSE-S3).
    Aes256,
    /// `aws:kms`: keys in KMS (`kms-key-id`, or the bucket's default key).
    AwsKms,
}

impl Sse {
    /// The value S3's `x-amz-server-side-encryption` header takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Sse::Aes256 => "AES256",
            Sse::AwsKms => "aws:kms",
        }
    }
}

impl std::str::FromStr for Sse {
    type Err = String;
    fn from_str(text: &str) -> Result<Sse, String> {
        match text {
            "aes256" | "AES256" => Ok(Sse::Aes256),
            "aws:kms" | "AWS:KMS" => Ok(Sse::AwsKms),
            other => Err(format!("{other:?} is not supported: use AES256 or aws:kms")),
        }
    }
}

impl TryFrom<String> for Sse {
    type Error = String;
    fn try_from(text: String) -> Result<Sse, String> {
        text.parse()
    }
}

/// `storage.s3.object-lock-mode`: how strictly Object Lock keeps an object (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete early (default).
    #[default]
    Governance,
    /// Nobody, not even the root account, deletes before the retention date.
    Compliance,
}

impl LockMode {
    /// The value S3's `x-amz-object-lock-mode` header takes.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl std::str::FromStr for LockMode {
    type Err = String;
    fn from_str(text: &str) -> Result<LockMode, String> {
        match text.to_ascii_uppercase().as_str() {
            "GOVERNANCE" => Ok(LockMode::Governance),
            "COMPLIANCE" => Ok(LockMode::Compliance),
            other => Err(format!("{other:?}: use GOVERNANCE or COMPLIANCE")),
        }
    }
}

impl TryFrom<String> for LockMode {
    type Error = String;
    fn try_from(text: String) -> Result<LockMode, String> {
        text.parse()
    }
}

/// The smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// How long a connection or one request may wait for the store by default (`storage.s3.timeout`).
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(30);

/// The validated `storage.s3` section: the bucket settings and the timeout. It derefs to the
/// [`S3Config`], so code that reads bucket settings need not know about timeouts.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub store: S3Config,
    /// Connect timeout, and the longest wait for the answer to one request attempt.
    pub timeout: Duration,
}

impl std::ops::Deref for S3Settings {
    type Target = S3Config;
    fn deref(&self) -> &S3Config {
        &self.store
    }
}

/// Upload bandwidth assumed when giving a part or object upload time beyond the timeout: a
/// request that sends a body is answered only after the body is sent.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    config: S3Config,
    errors: Arc<ErrorContext>,
}

/// What an error message says about where a request went and how long it waited.
#[derive(Debug)]
struct ErrorContext {
    bucket: String,
    /// `http://host:port`, or the AWS endpoint of the region.
    endpoint: String,
    timeout: Duration,
    max_attempts: u32,
}

impl S3Store {
    /// Connects with the default timeout ([`DEFAULT_S3_TIMEOUT`]).
    pub async fn connect(config: S3Config) -> Result<S3Store, StorageError> {
        Self::connect_with_timeout(config, DEFAULT_S3_TIMEOUT).await
    }

    /// Connects to the store of a validated `storage.s3` section.
    pub async fn connect_settings(settings: S3Settings) -> Result<S3Store, StorageError> {
        Self::connect_with_timeout(settings.store, settings.timeout).await
    }

    /// Connects; `timeout` bounds each connection attempt and the wait for each request's
    /// answer (uploads get time for their body on top), so a store that accepts connections
    /// and never answers fails after `max-attempts` x `timeout`, not minutes.
    pub async fn connect_with_timeout(
        config: S3Config,
        timeout: Duration,
    ) -> Result<S3Store, StorageError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()));
        if let (Some(id_file), Some(secret_file)) =
            (&config.access_key_id_file, &config.secret_access_key_file)
        {
            let read = |key: &'static str, path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .map(|s| s.trim().to_string())
                    .map_err(|source| StorageError::Setup {
                        store: format!("s3://{} ({key})", config.bucket),
                        path: path.to_path_buf(),
                        source,
                    })
            };
            let id = read("access-key-id-file", id_file)?;
            let secret = read("secret-access-key-file", secret_file)?;
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "etcdsafe-secret-files",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(timeouts(timeout, timeout));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let errors = Arc::new(ErrorContext {
            bucket: config.bucket.clone(),
            endpoint: config
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("the AWS S3 endpoint of {}", config.region)),
            timeout,
            max_attempts: config.max_attempts,
        });
        builder = builder.interceptor(RetryLog {
            errors: errors.clone(),
        });
        Ok(S3Store {
            inner: Arc::new(Inner {
                client: Client::from_conf(builder.build()),
                config,
                errors,
            }),
        })
    }

    /// A config override for a request that sends `body_len` bytes: the answer comes only
    /// after the body is sent, so it gets time for that on top of the timeout.
    fn upload_override(&self, body_len: usize) -> aws_sdk_s3::config::Builder {
        upload_override(&self.inner.errors, body_len)
    }

    fn full_key(&self, key: &str) -> Result<String, StorageError> {
        check_key(&self.describe(), key)?;
        Ok(format!("{}{key}", self.inner.config.prefix))
    }

    fn bucket(&self) -> &str {
        &self.inner.config.bucket
    }

    /// Aborts incomplete multipart uploads under our prefix started more than `older_than` ago
    /// (left by a crashed or killed run). Returns the keys whose uploads were aborted.
    pub async fn abort_stale_uploads(
        &self,
        older_than: Duration,
    ) -> Result<Vec<String>, StorageError> {
        let cutoff = SystemTime::now() - older_than;
        let mut aborted = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = self
                .inner
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(&self.inner.config.prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await
                .map_err(|e| self.sdk_error("", "list multipart uploads", e))?;
            for upload in page.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                    continue;
                };
                let initiated = upload
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if initiated > cutoff {
                    continue;
                }
                self.inner
                    .client
                    .abort_multipart_upload()
                    .bucket(self.bucket())
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(key, "abort stale multipart upload", e))?;
                tracing::warn!(
                    key,
                    "aborted a stale multipart upload left by an interrupted run"
                );
                aborted.push(key.to_string());
            }
            if page.is_truncated() == Some(true) {
                key_marker = page.next_key_marker().map(str::to_string);
                upload_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() && upload_marker.is_none() {
                    break;
                }
            } else {
                break;
            }
        }
        Ok(aborted)
    }

    fn writer(&self, key: &str, exclusive: bool) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let full_key = self.full_key(key)?;
        Ok(Box::new(S3Writer {
            store: self.clone(),
            key: key.to_string(),
            full_key,
            exclusive,
            buffer: BytesMut::new(),
            upload_id: None,
            parts: Vec::new(),
            in_flight: JoinSet::new(),
            next_part: 1,
            size: 0,
            closed: false,
        }))
    }

    /// The ETag of the object under `full_key`, `None` when there is none.
    async fn head_etag(&self, full_key: &str, key: &str) -> Result<Option<String>, StorageError> {
        match self
            .inner
            .client
            .head_object()
            .bucket(self.bucket())
            .key(full_key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(self.sdk_error(key, "check for an existing object", e)),
        }
    }

    /// `AlreadyExists` when an object is under `full_key`: the cheap check before writing,
    /// for stores that ignore `If-None-Match`.
    async fn refuse_existing(&self, full_key: &str, key: &str) -> Result<(), StorageError> {
        match self.head_etag(full_key, key).await? {
            Some(_) => Err(self.already_exists(key)),
            None => Ok(()),
        }
    }

    /// The read-back check after a conditional write: on a store that ignored
    /// `If-None-Match`, a writer that raced us may have replaced our object. Then the object
    /// is theirs, and ours is the write that failed.
    async fn check_still_ours(
        &self,
        full_key: &str,
        key: &str,
        etag: Option<String>,
    ) -> Result<(), StorageError> {
        let Some(ours) = etag.filter(|e| !e.is_empty()) else {
            return Ok(());
        };
        match self.head_etag(full_key, key).await? {
            Some(found) if found != ours => Err(self.already_exists(key)),
            _ => Ok(()),
        }
    }

    fn already_exists(&self, key: &str) -> StorageError {
        StorageError::AlreadyExists {
            store: self.describe(),
            key: key.to_string(),
        }
    }

    /// Like `sdk_error`, but a failed `If-None-Match: *` precondition (412), or a conditional
    /// write racing another one for the key (409), is `AlreadyExists`.
    fn conditional_error<E>(
        &self,
        key: &str,
        action: &'static str,
        error: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &error {
            SdkError::ServiceError(e) if matches!(e.raw().status().as_u16(), 409 | 412) => {
                self.already_exists(key)
            }
            _ => self.sdk_error(key, action, error),
        }
    }

    fn sdk_error<E>(
        &self,
        key: &str,
        action: &'static str,
        error: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        s3_error(&self.inner.errors, key, action, error)
    }
}

fn timeouts(connect: Duration, read: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .build()
}

fn upload_override(errors: &ErrorContext, body_len: usize) -> aws_sdk_s3::config::Builder {
    let transfer = Duration::from_secs(body_len as u64 / SLOWEST_UPLOAD_BYTES_PER_SEC);
    aws_sdk_s3::config::Builder::default()
        .timeout_config(timeouts(errors.timeout, errors.timeout + transfer))
}

/// Says, at warn, which request is retried after what (the SDK retries silently).
#[derive(Debug)]
struct RetryLog {
    errors: Arc<ErrorContext>,
}

/// Attempts of one operation so far, and how the last one failed.
#[derive(Debug, Clone, Default)]
struct Attempts {
    count: u32,
    last_failure: Option<String>,
}

impl aws_smithy_types::config_bag::Storable for Attempts {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Intercept for RetryLog {
    fn name(&self) -> &'static str {
        "etcdsafe-retry-log"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let mut attempts = cfg.load::<Attempts>().cloned().unwrap_or_default();
        attempts.count += 1;
        cfg.interceptor_state().store_put(attempts);
        Ok(())
    }

    // Said here rather than before the attempt: only now is the request's URI complete.
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let attempts = cfg.load::<Attempts>().cloned().unwrap_or_default();
        if attempts.count > 1 {
            let request = context.request();
            // The path names the bucket and key; the query is left out (upload ids, markers).
            let uri = request.uri();
            let path = uri
                .split_once("://")
                .map_or(uri, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]))
                .split('?')
                .next()
                .unwrap_or_default();
            tracing::warn!(
                endpoint = %self.errors.endpoint,
                request = %format!("{} {path}", request.method()),
                attempt = attempts.count,
                max_attempts = self.errors.max_attempts,
                failure = attempts.last_failure.as_deref().unwrap_or("unknown"),
                "S3 request failed; retrying"
            );
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let failure = match (context.response(), context.output_or_error()) {
            (Some(response), _) if !response.status().is_success() => {
                Some(format!("HTTP {}", response.status().as_u16()))
            }
            (_, Some(Err(error))) => Some(match error.as_connector_error() {
                Some(c) if c.is_timeout() => "no answer within the timeout".to_string(),
                Some(c) if c.is_io() => "connection failed".to_string(),
                _ => error.to_string().replace('\n', " "),
            }),
            _ => None,
        };
        if let Some(failure) = failure {
            let mut attempts = cfg.load::<Attempts>().cloned().unwrap_or_default();
            attempts.last_failure = Some(failure);
            cfg.interceptor_state().store_put(attempts);
        }
        Ok(())
    }
}

fn s3_error<E>(
    errors: &ErrorContext,
    key: &str,
    action: &'static str,
    error: SdkError<E, HttpResponse>,
) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let attempts = MaxAttempts(errors.max_attempts);
    let call = || {
        Box::new(S3Call {
            bucket: errors.bucket.clone(),
            key: key.to_string(),
            action,
            endpoint: errors.endpoint.clone(),
        })
    };
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = match service.err().code() {
                Some(code) if !code.is_empty() => code.to_string(),
                _ if status == 403 => "Forbidden".to_string(),
                _ => String::new(),
            };
            let message = service
                .err()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "HTTP {status}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(service.err())
                    )
                })
                .replace('\n', " ");
            let hint = match code.as_str() {
                "NoSuchBucket" => NO_BUCKET_HINT,
                "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "Forbidden" => {
                    CREDENTIALS_HINT
                }
                _ => "",
            };
            StorageError::S3 {
                bucket: errors.bucket.clone(),
                key: key.to_string(),
                action,
                answer: Box::new(S3Answer {
                    status,
                    code,
                    message,
                    hint,
                }),
            }
        }
        SdkError::ResponseError(response) => StorageError::S3NotS3 {
            call: call(),
            status: response.raw().status().as_u16(),
            hint: "",
        },
        SdkError::DispatchFailure(failure) if failure.is_timeout() => StorageError::S3Timeout {
            call: call(),
            timeout: errors.timeout,
            attempts,
            source: Box::new(SdkError::<E, HttpResponse>::DispatchFailure(failure)),
        },
        SdkError::DispatchFailure(failure) if failure.is_io() => StorageError::S3Unreachable {
            call: call(),
            attempts,
            source: Box::new(SdkError::<E, HttpResponse>::DispatchFailure(failure)),
        },
        timeout @ SdkError::TimeoutError(_) => StorageError::S3Timeout {
            call: call(),
            timeout: errors.timeout,
            attempts,
            source: Box::new(timeout),
        },
        other => StorageError::S3Client {
            call: call(),
            source: Box::new(other),
        },
    }
}

const NO_BUCKET_HINT: &str = ": the bucket does not exist: create it, or fix storage.s3.bucket";
const CREDENTIALS_HINT: &str = ": the credentials were refused: check access-key-id-file / secret-access-key-file (or AWS_* env) and the bucket policy";

/// A call to the S3 endpoint, as errors name it: `s3://bucket/key: action failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Call {
    pub bucket: String,
    pub key: String,
    pub action: &'static str,
    /// `http://host:port`, or the AWS endpoint of the region.
    pub endpoint: String,
}

impl std::fmt::Display for S3Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s3://{}/{}: {} failed",
            self.bucket, self.key, self.action
        )
    }
}

/// What the S3 endpoint answered to a call that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Answer {
    /// The HTTP status.
    pub status: u16,
    /// S3's error code (`NoSuchBucket`, `AccessDenied`), empty when it sent none.
    pub code: String,
    /// What it said, or the HTTP status and the SDK's description when it said nothing.
    pub message: String,
    /// What to do, chosen from the status and the code.
    pub hint: &'static str,
}

impl std::fmt::Display for S3Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.code.is_empty() {
            write!(f, "{}: ", self.code)?;
        }
        write!(f, "{}{}", self.message, self.hint)
    }
}

/// How many attempts the SDK made at most (`storage.s3.max-attempts`), as messages say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAttempts(pub u32);

impl std::fmt::Display for MaxAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => f.write_str("1 attempt"),
            n => write!(f, "up to {n} attempts"),
        }
    }
}

fn checksum(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(Sha256::digest(data))
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket(), self.inner.config.prefix)
    }

    async fn preflight(&self) -> Result<(), StorageError> {
        self.inner
            .client
            .head_bucket()
            .bucket(self.bucket())
            .send()
            .await
            .map_err(|e| {
                // HeadBucket has no body, so a missing bucket shows as a bare 404: decide on
                // the HTTP status and the error code, not on the message.
                let mut err = self.sdk_error("", "check bucket", e);
                let (status, code, hint) = match &mut err {
                    StorageError::S3 { answer, .. } => {
                        let S3Answer {
                            status, code, hint, ..
                        } = answer.as_mut();
                        (*status, code.as_str(), hint)
                    }
                    StorageError::S3NotS3 { status, hint, .. } => (*status, "", hint),
                    _ => return err,
                };
                if status == 404 || code == "NotFound" {
                    *hint = NO_BUCKET_HINT;
                } else if status == 403 || code == "Forbidden" {
                    *hint = CREDENTIALS_HINT;
                }
                err
            })?;
        Ok(())
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, false)
    }

    async fn create_new(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, true)
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let full_key = self.full_key(key)?;
        self.refuse_existing(&full_key, key).await?;
        let etag = put_object_with(self, &full_key, key, data, true).await?;
        self.check_still_ours(&full_key, key, etag).await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let full_key = self.full_key(key)?;
        put_object(self, &full_key, key, data).await
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let full_key = self.full_key(key)?;
        let out = self
            .inner
            .client
            .get_object()
            .bucket(self.bucket())
            .key(&full_key)
            .send()
            .await
            .map_err(|e| {
                let not_found = matches!(&e, SdkError::ServiceError(s) if s.err().is_no_such_key());
                if not_found {
                    StorageError::NotFound {
                        store: self.describe(),
                        key: key.to_string(),
                    }
                } else {
                    self.sdk_error(key, "get", e)
                }
            })?;
        Ok(Box::new(out.body.into_async_read()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let full_prefix = format!("{}{prefix}", self.inner.config.prefix);
        let mut pages = self
            .inner
            .client
            .list_objects_v2()
            .bucket(self.bucket())
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_error(prefix, "list", e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(rel) = key.strip_prefix(&self.inner.config.prefix) else {
                    continue;
                };
                out.push(ObjectInfo {
                    key: rel.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full_key = self.full_key(key)?;
        self.inner
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(&full_key)
            .send()
            .await
            .map_err(|e| self.sdk_error(key, "delete", e))?;
        Ok(())
    }

    async fn abort_stale(&self, older_than: Duration) -> Result<Vec<String>, StorageError> {
        self.abort_stale_uploads(older_than).await
    }
}

async fn put_object(
    store: &S3Store,
    full_key: &str,
    key: &str,
    data: Bytes,
) -> Result<(), StorageError> {
    put_object_with(store, full_key, key, data, false)
        .await
        .map(|_| ())
}

/// One PUT; with `exclusive`, conditional on no object existing (`If-None-Match: *`).
/// Returns the new object's ETag.
async fn put_object_with(
    store: &S3Store,
    full_key: &str,
    key: &str,
    data: Bytes,
    exclusive: bool,
) -> Result<Option<String>, StorageError> {
    let config = &store.inner.config;
    let body_len = data.len();
    let mut request = store
        .inner
        .client
        .put_object()
        .bucket(store.bucket())
        .key(full_key)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_sha256(checksum(&data))
        .content_length(data.len() as i64)
        .body(ByteStream::from(data));
    request = with_object_options!(request, config);
    if exclusive {
        request = request.if_none_match("*");
    }
    let out = request
        .customize()
        .config_override(store.upload_override(body_len))
        .send()
        .await
        .map_err(|e| store.conditional_error(key, "put", e))?;
    Ok(out.e_tag().map(str::to_string))
}

/// Applies the per-object options (SSE, KMS key, storage class, Object Lock) to a PutObject or
/// CreateMultipartUpload request; the two SDK builders share no trait, hence a macro.
macro_rules! with_object_options {
    ($request:expr, $config:expr) => {{
        let mut request = $request;
        let config: &S3Config = $config;
        if let Some(sse) = &config.sse {
            request = request.server_side_encryption(ServerSideEncryption::from(sse.as_str()));
        }
        if let Some(kms) = &config.kms_key_id {
            request = request.ssekms_key_id(kms);
        }
        if let Some(class) = &config.storage_class {
            request = request.storage_class(StorageClass::from(class.as_str()));
        }
        if let Some((mode, until)) = lock_until(config) {
            request = request
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        request
    }};
}
use with_object_options;

fn lock_until(config: &S3Config) -> Option<(ObjectLockMode, aws_smithy_types::DateTime)> {
    let days = config.object_lock_days?;
    let until = SystemTime::now() + Duration::from_secs(u64::from(days) * 86_400);
    Some((
        ObjectLockMode::from(config.object_lock_mode.as_str()),
        aws_smithy_types::DateTime::from(until),
    ))
}

struct S3Writer {
    store: S3Store,
    key: String,
    full_key: String,
    /// Commit only if no object exists under the key (never replace).
    exclusive: bool,
    buffer: BytesMut,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    next_part: i32,
    size: u64,
    closed: bool,
}

impl S3Writer {
    fn part_size(&self) -> usize {
        self.store.inner.config.part_size
    }

    async fn ensure_upload(&mut self) -> Result<String, StorageError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let config = &self.store.inner.config;
        let mut request = self
            .store
            .inner
            .client
            .create_multipart_upload()
            .bucket(self.store.bucket())
            .key(&self.full_key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        request = with_object_options!(request, config);
        let out = request
            .send()
            .await
            .map_err(|e| self.store.sdk_error(&self.key, "start multipart upload", e))?;
        let id = out.upload_id().unwrap_or_default().to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Starts uploading one part, first waiting while `concurrency` parts are in flight.
    async fn send_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let upload_id = self.ensure_upload().await?;
        while self.in_flight.len() >= self.store.inner.config.concurrency {
            self.join_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let client = self.store.inner.client.clone();
        let bucket = self.store.bucket().to_string();
        let errors = self.store.inner.errors.clone();
        let full_key = self.full_key.clone();
        let key = self.key.clone();
        self.in_flight.spawn(async move {
            let body_len = data.len();
            let sum = checksum(&data);
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&full_key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&sum)
                .content_length(data.len() as i64)
                .body(ByteStream::from(data))
                .customize()
                .config_override(upload_override(&errors, body_len))
                .send()
                .await
                .map_err(|e| s3_error(&errors, &key, "upload part", e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_sha256(sum)
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StorageError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.map_err(|source| StorageError::S3Task {
                bucket: self.store.bucket().to_string(),
                key: self.key.clone(),
                action: "upload part",
                source,
            })??;
            self.parts.push(part);
        }
        Ok(())
    }

    async fn abort_upload(&mut self) -> Result<(), StorageError> {
        self.closed = true;
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            self.store
                .inner
                .client
                .abort_multipart_upload()
                .bucket(self.store.bucket())
                .key(&self.full_key)
                .upload_id(id)
                .send()
                .await
                .map_err(|e| self.store.sdk_error(&self.key, "abort multipart upload", e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.size += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        while self.buffer.len() >= self.part_size() {
            let part = self.buffer.split_to(self.part_size()).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Committed, StorageError> {
        let result = async {
            if self.exclusive {
                self.store
                    .refuse_existing(&self.full_key, &self.key)
                    .await?;
            }
            if self.upload_id.is_none() {
                let data = std::mem::take(&mut self.buffer).freeze();
                let etag =
                    put_object_with(&self.store, &self.full_key, &self.key, data, self.exclusive)
                        .await?;
                if self.exclusive {
                    self.store
                        .check_still_ours(&self.full_key, &self.key, etag)
                        .await?;
                }
                return Ok(());
            }
            if !self.buffer.is_empty() {
                let last = std::mem::take(&mut self.buffer).freeze();
                self.send_part(last).await?;
            }
            while !self.in_flight.is_empty() {
                self.join_one().await?;
            }
            let mut parts = std::mem::take(&mut self.parts);
            parts.sort_by_key(|p| p.part_number());
            let upload_id = self.upload_id.clone().unwrap_or_default();
            let mut request = self
                .store
                .inner
                .client
                .complete_multipart_upload()
                .bucket(self.store.bucket())
                .key(&self.full_key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                );
            if self.exclusive {
                request = request.if_none_match("*");
            }
            let out = request.send().await.map_err(|e| {
                self.store
                    .conditional_error(&self.key, "complete multipart upload", e)
            })?;
            self.upload_id = None;
            if self.exclusive {
                let etag = out.e_tag().map(str::to_string);
                self.store
                    .check_still_ours(&self.full_key, &self.key, etag)
                    .await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.closed = true;
                Ok(Committed {
                    key: self.key.clone(),
                    size: self.size,
                })
            }
            Err(e) => {
                let _ = self.abort_upload().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.abort_upload().await
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped without commit or abort (a cancelled run): abort in the background if we can;
        // otherwise `abort_stale_uploads` on a later run cleans it up.
        if self.closed {
            return;
        }
        self.in_flight.abort_all();
        if let (Some(id), Ok(handle)) =
            (self.upload_id.take(), tokio::runtime::Handle::try_current())
        {
            let client = self.store.inner.client.clone();
            let bucket = self.store.bucket().to_string();
            let key = self.full_key.clone();
            handle.spawn(async move {
                let _ = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            });
        }
    }
}
