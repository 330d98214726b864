//! Native replacements for `etcdutl snapshot restore` (etcd 3.5) / `etcdctl snapshot restore`
//! (etcd 3.4): the files a restored member's data dir holds, written without etcd's tools.
pub mod bolt_append;
pub mod bolt_patch;
pub mod membership;
pub mod pb;
pub mod restore;
pub mod snapfile;
pub mod wal;
