//! Finding the programs etcdsafe runs (etcd, etcdutl, etcdctl) on PATH: one home, so restore,
//! drill and upgrade agree on where a program is.

use std::path::{Path, PathBuf};

/// The first file named `name` in a directory of PATH (an empty entry means the current dir,
/// as in a shell).
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    find_on_path_where(name, |p| p.is_file())
}

/// The first `name` on PATH that `accept` takes (an empty entry is the current directory).
pub fn find_on_path_where(name: &str, accept: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            }
        })
        .map(|dir| dir.join(name))
        .find(|candidate| accept(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_not_found() {
        assert_eq!(find_on_path("etcdsafe-no-such-program-here"), None);
    }
}
