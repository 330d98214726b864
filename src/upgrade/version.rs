//! Kubernetes release versions (`v1.23.3`, `v1.24.0-rc.1`) and where the running one is found:
//! the image tag in kubeadm's `kube-apiserver.yaml`, or the API server's `/version`.

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

/// A Kubernetes version: `MAJOR.MINOR.PATCH`, an optional pre-release (`-rc.1`, `-alpha.0`,
/// `-beta.2`), with or without the `v`. Build metadata (`+k3s1`) is accepted and ignored, as
/// semver orders versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Pre-release identifiers, e.g. `["rc", "1"]`; empty for a release.
    pub pre: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a Kubernetes version: {problem}; write it like v1.23.3")]
pub struct ParseVersionError {
    pub text: String,
    pub problem: &'static str,
}

impl Version {
    pub fn new(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
            pre: Vec::new(),
        }
    }

    pub fn parse(text: &str) -> Result<Version, ParseVersionError> {
        let fail = |problem| ParseVersionError {
            text: text.to_string(),
            problem,
        };
        let trimmed = text.trim();
        let body = trimmed.strip_prefix(['v', 'V']).unwrap_or(trimmed);
        // Build metadata never affects ordering.
        let body = match body.split_once('+') {
            Some((body, build)) => {
                if build.is_empty() || !build.split('.').all(valid_identifier) {
                    return Err(fail("the build metadata after + is malformed"));
                }
                body
            }
            None => body,
        };
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (body, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() != 3 {
            return Err(fail("it needs exactly MAJOR.MINOR.PATCH"));
        }
        let mut numbers = [0u64; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            *slot = numeric(part).ok_or_else(|| {
                fail("MAJOR, MINOR and PATCH must be numbers without leading zeros")
            })?;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let ids: Vec<String> = pre.split('.').map(str::to_string).collect();
                let ok = ids.iter().all(|id| {
                    valid_identifier(id)
                        && !(id.len() > 1
                            && id.starts_with('0')
                            && id.bytes().all(|b| b.is_ascii_digit()))
                });
                if !ok {
                    return Err(fail("the pre-release part after - is malformed"));
                }
                ids
            }
        };
        Ok(Version {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            pre,
        })
    }

    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// `v1.23`, for messages about minor versions.
    pub fn minor_text(&self) -> String {
        format!("v{}.{}", self.major, self.minor)
    }
}

fn valid_identifier(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn numeric(part: &str) -> Option<u64> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if part.len() > 1 && part.starts_with('0') {
        return None;
    }
    part.parse().ok()
}

impl std::str::FromStr for Version {
    type Err = ParseVersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre.join("."))?;
        }
        Ok(())
    }
}

impl Ord for Version {
    /// Semver precedence: a pre-release sorts below its release (`v1.24.0-rc.1 < v1.24.0`),
    /// numeric identifiers compare as numbers, others as ASCII (`alpha < beta < rc`).
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let order = match (numeric(a), numeric(b)) {
                            (Some(x), Some(y)) => x.cmp(&y),
                            (Some(_), None) => Ordering::Less,
                            (None, Some(_)) => Ordering::Greater,
                            (None, None) => a.cmp(b),
                        };
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The versions named in an upgrade command's words (`kubeadm upgrade apply v1.23.3`), in
/// order, without repeats. Only whole words after the program count, so paths and
/// `--flag=value` are ignored; when some words carry the `v` (as Kubernetes versions are
/// written), bare `X.Y.Z` words (e.g. an etcd version passed along) are ignored.
pub fn versions_in_command(words: &[String]) -> Vec<Version> {
    let mut prefixed: Vec<Version> = Vec::new();
    let mut bare: Vec<Version> = Vec::new();
    for word in words.iter().skip(1) {
        let (list, body) = match word.strip_prefix(['v', 'V']) {
            Some(body) => (&mut prefixed, body),
            None => (&mut bare, word.as_str()),
        };
        // Only words that look like a version at a glance: a digit right after the optional v.
        if !body.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(v) = Version::parse(word) {
            if !list.contains(&v) {
                list.push(v);
            }
        }
    }
    if prefixed.is_empty() {
        bare
    } else {
        prefixed
    }
}

/// Where a version was found, for the plan and the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The image tag of the kube-apiserver static pod.
    Manifest { path: PathBuf, image: String },
    /// `gitVersion` from the API server's `/version`.
    ApiServer {
        kubeconfig: PathBuf,
        server: String,
        git_version: String,
    },
}

impl fmt::Display for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionSource::Manifest { path, image } => {
                write!(f, "image {image} in {}", path.display())
            }
            VersionSource::ApiServer {
                server,
                git_version,
                kubeconfig,
            } => write!(
                f,
                "gitVersion {git_version} from {server}/version (kubeconfig {})",
                kubeconfig.display()
            ),
        }
    }
}

/// Why a version could not be read from one place.
#[derive(Debug, thiserror::Error)]
pub enum VersionSourceError {
    #[error("cannot read {}: {source}", path.display())]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a Pod manifest: {problem}", path.display())]
    NotAPod {
        path: PathBuf,
        #[source]
        problem: crate::etcd::kubeadm::NotAPod,
    },
    #[error("{}: no kube-apiserver container (looked for a container named kube-apiserver, or a kube-apiserver image)", path.display())]
    NoApiserver { path: PathBuf },
    #[error("{}: image {image}: no tag to read the version from (kubeadm writes image: REGISTRY/kube-apiserver:vX.Y.Z)", path.display())]
    NoImageTag { path: PathBuf, image: String },
    #[error("{}: image {image}: {source}", path.display())]
    ImageVersion {
        path: PathBuf,
        image: String,
        #[source]
        source: ParseVersionError,
    },
    #[error("kubeconfig {}: {}", path.display(), error_chain(source))]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("API server {server} (kubeconfig {}): GET /version failed: {}", kubeconfig.display(), error_chain(source.as_ref()))]
    ApiServer {
        kubeconfig: PathBuf,
        server: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("API server {server} (kubeconfig {}): GET /version failed: no answer within {timeout:?}", kubeconfig.display())]
    ApiTimeout {
        kubeconfig: PathBuf,
        server: String,
        timeout: Duration,
    },
    #[error("API server {server} (kubeconfig {}): GET /version failed: gitVersion {source}", kubeconfig.display())]
    ApiVersion {
        kubeconfig: PathBuf,
        server: String,
        #[source]
        source: ParseVersionError,
    },
}

/// The name of kubeadm's API server static pod manifest inside the manifests dir.
pub const APISERVER_MANIFEST: &str = "kube-apiserver.yaml";

/// Reads the control-plane version from the image tag of kubeadm's `kube-apiserver.yaml`.
pub fn version_from_manifest(path: &Path) -> Result<(Version, VersionSource), VersionSourceError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| VersionSourceError::ReadManifest {
            path: path.to_path_buf(),
            source,
        })?;
    parse_apiserver_manifest(path, &text)
}

/// Parses a kube-apiserver static pod manifest; `path` is used in messages.
pub fn parse_apiserver_manifest(
    path: &Path,
    text: &str,
) -> Result<(Version, VersionSource), VersionSourceError> {
    let path = path.to_path_buf();
    let containers = crate::etcd::kubeadm::pod_containers(text).map_err(|problem| {
        VersionSourceError::NotAPod {
            path: path.clone(),
            problem,
        }
    })?;
    let image_of = |c: &Value| c.get("image").and_then(Value::as_str).map(str::to_string);
    let image = containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("kube-apiserver"))
        .and_then(image_of)
        .or_else(|| {
            containers
                .iter()
                .filter_map(image_of)
                .find(|i| image_name(i).ends_with("kube-apiserver"))
        })
        .ok_or_else(|| VersionSourceError::NoApiserver { path: path.clone() })?;
    let Some(tag) = image_tag(&image) else {
        return Err(VersionSourceError::NoImageTag { path, image });
    };
    let version = match Version::parse(tag) {
        Ok(version) => version,
        Err(source) => {
            return Err(VersionSourceError::ImageVersion {
                path,
                image,
                source,
            })
        }
    };
    Ok((version, VersionSource::Manifest { path, image }))
}

/// `registry.k8s.io/kube-apiserver:v1.23.2@sha256:…` → `registry.k8s.io/kube-apiserver`.
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

/// The tag of an image reference, if it has one: a registry port (`host:5000/…`) is not a tag,
/// and a digest (`@sha256:…`) is ignored.
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let colon = without_digest.rfind(':')?;
    let tag = &without_digest[colon + 1..];
    (!tag.is_empty() && !tag.contains('/')).then_some(tag)
}

/// How long the API server gets to answer `/version`.
pub const APISERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the API server named by a kubeconfig (its current context) for its version.
pub async fn version_from_apiserver(
    kubeconfig: &Path,
    timeout: Duration,
) -> Result<(Version, VersionSource), VersionSourceError> {
    let bad_kubeconfig = |source| VersionSourceError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(bad_kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(bad_kubeconfig)?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let api_error = |source| VersionSourceError::ApiServer {
        kubeconfig: kubeconfig.to_path_buf(),
        server: server.clone(),
        source: Box::new(source),
    };
    // Both ring and aws-lc-rs are linked in, so rustls cannot pick a provider by itself; main
    // installs ring, and so does this, for library callers (a no-op when one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_from(config).map_err(api_error)?;
    let info = tokio::time::timeout(timeout, client.apiserver_version())
        .await
        .map_err(|_| VersionSourceError::ApiTimeout {
            kubeconfig: kubeconfig.to_path_buf(),
            server: server.clone(),
            timeout,
        })?
        .map_err(api_error)?;
    let version =
        Version::parse(&info.git_version).map_err(|source| VersionSourceError::ApiVersion {
            kubeconfig: kubeconfig.to_path_buf(),
            server: server.clone(),
            source,
        })?;
    Ok((
        version,
        VersionSource::ApiServer {
            kubeconfig: kubeconfig.to_path_buf(),
            server,
            git_version: info.git_version,
        },
    ))
}

/// An error and its causes on one line, skipping causes already in the text.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        current = e.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn parses_with_and_without_the_v() {
        assert_eq!(v("v1.23.3"), Version::new(1, 23, 3));
        assert_eq!(v("1.23.3"), Version::new(1, 23, 3));
        assert_eq!(v(" V1.23.3 "), Version::new(1, 23, 3));
        assert_eq!(v("v1.24.0-rc.1").pre, vec!["rc", "1"]);
        assert_eq!(v("v1.23.3+k3s1"), Version::new(1, 23, 3));
        assert_eq!(v("1.24.0-rc.1").to_string(), "v1.24.0-rc.1");
    }

    #[test]
    fn refuses_garbage() {
        for text in [
            "",
            "v",
            "latest",
            "stable-1.23",
            "1.23",
            "v1",
            "1.23.3.4",
            "v1.x.3",
            "v01.23.3",
            "v1.023.3",
            "v1.23.",
            "v1.23.3-",
            "v1.23.3-rc..1",
            "v1.23.3-rc.01",
            "v1.23.3+",
            "v-1.23.3",
            "v1.23.3 v1.23.4",
            "1.2.99999999999999999999999",
        ] {
            let err = Version::parse(text).expect_err(text);
            assert!(err.to_string().contains("write it like v1.23.3"), "{err}");
        }
    }

    #[test]
    fn orders_pre_releases_below_the_release() {
        let ordered = [
            "v1.23.9",
            "v1.24.0-alpha.0",
            "v1.24.0-alpha.1",
            "v1.24.0-alpha.10",
            "v1.24.0-beta.0",
            "v1.24.0-rc",
            "v1.24.0-rc.0",
            "v1.24.0-rc.1",
            "v1.24.0",
            "v1.24.1",
            "v1.25.0",
            "v2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("v1.23.3").cmp(&v("1.23.3+build5")), Ordering::Equal);
    }

    #[test]
    fn finds_the_version_in_the_command() {
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            versions_in_command(&words("kubeadm upgrade apply v1.23.3")),
            vec![v("v1.23.3")]
        );
        assert_eq!(
            versions_in_command(&words(
                "kubeadm upgrade apply 1.23.3 -y --etcd-upgrade=false"
            )),
            vec![v("v1.23.3")]
        );
        assert_eq!(
            versions_in_command(&words("kubeadm upgrade apply --config=/etc/v1.2.3.yaml")),
            Vec::<Version>::new()
        );
        assert_eq!(
            versions_in_command(&words("/opt/v1.23.3/kubeadm upgrade node")),
            Vec::<Version>::new(),
            "the program itself is not a version"
        );
        assert_eq!(
            versions_in_command(&words("x v1.23.3 1.23.3 v1.24.0 v1.23.3")),
            vec![v("v1.23.3"), v("v1.24.0")]
        );
        assert_eq!(
            versions_in_command(&words("upgrade.sh v1.23.3 --etcd-version 3.5.1-0")),
            vec![v("v1.23.3")],
            "a bare X.Y.Z does not compete with a vX.Y.Z"
        );
        assert_eq!(
            versions_in_command(&words("upgrade.sh 1.23.3 3.5.1-0")),
            vec![v("v1.23.3"), v("v3.5.1-0")]
        );
    }

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("k8s.gcr.io/kube-apiserver:v1.23.2"),
            Some("v1.23.2")
        );
        assert_eq!(
            image_tag("registry.k8s.io/kube-apiserver:v1.23.2@sha256:1234abcd"),
            Some("v1.23.2")
        );
        assert_eq!(
            image_tag("localhost:5000/k8s/kube-apiserver:v1.23.2"),
            Some("v1.23.2")
        );
        assert_eq!(image_tag("localhost:5000/k8s/kube-apiserver"), None);
        assert_eq!(
            image_tag("registry.k8s.io/kube-apiserver@sha256:1234"),
            None
        );
        assert_eq!(
            image_name("localhost:5000/k8s/kube-apiserver:v1.23.2@sha256:12"),
            "localhost:5000/k8s/kube-apiserver"
        );
    }

    #[test]
    fn manifest_without_a_tag_says_so() {
        let text = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver@sha256:abcd\n";
        let err = parse_apiserver_manifest(Path::new("/m/kube-apiserver.yaml"), text).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/m/kube-apiserver.yaml"), "{text}");
        assert!(text.contains("no tag"), "{text}");
    }

    #[test]
    fn manifest_that_is_not_a_pod_says_so() {
        let err =
            parse_apiserver_manifest(Path::new("/m/x.yaml"), "kind: Deployment\n").unwrap_err();
        assert!(err.to_string().contains("kind is not Pod"), "{err}");
        let err =
            parse_apiserver_manifest(Path::new("/m/x.yaml"), "kind: Pod\nspec:\n  containers:\n  - name: etcd\n    image: registry.k8s.io/etcd:3.5.1-0\n").unwrap_err();
        assert!(
            err.to_string().contains("no kube-apiserver container"),
            "{err}"
        );
    }
}
